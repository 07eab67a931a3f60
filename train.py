"""Train a classifier: `python train.py --help`. The code lives in classifier/train.py."""
import sys

from classifier.train import main

if __name__ == "__main__":
    sys.exit(main())
