"""A dogs-vs-cats (or any-folder-of-classes) image classifier in plain PyTorch.

Where things live: README.md, "Where things are" (every module, one line each); the layers that
imports follow are tests/test_layout.py's LAYERS, the one map of them.
"""

from classifier.errors import ClassifierError
from classifier.inference import Classifier
from classifier.models import create_model, list_models

__all__ = ["Classifier", "ClassifierError", "create_model", "list_models"]
