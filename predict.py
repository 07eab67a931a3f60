"""Classify photos: `python predict.py --help`. The code lives in classifier/predict.py."""
import sys

from classifier.cli import predict_main

if __name__ == "__main__":
    sys.exit(predict_main())
