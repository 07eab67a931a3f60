"""Train a classifier: `python train.py --help`. The code lives in classifier/train.py."""
import sys

from classifier.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
