"""Classify photos: `python predict.py --help`. The code lives in classifier/predict.py."""
import sys

from classifier.predict import main

if __name__ == "__main__":
    sys.exit(main())
