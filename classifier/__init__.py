"""A dogs-vs-cats (or any-folder-of-classes) image classifier in plain PyTorch.

Where things live:
  data.py        finding images, decoding them once, caching, batch augmentation
  models.py      the model registry: create_model(name, num_classes, **args)
  train.py       the training loop
  checkpoint.py  saving and loading one self-describing checkpoint file
  predict.py     Classifier.load(path).predict(image) -> probabilities
  report.py      a training run's report: curves, confusion matrix, calibration, mistakes
  explain.py     Grad-CAM heatmaps, feature maps, first-layer filters, MLP templates
  cli.py         the command-line interfaces
"""

from classifier.errors import ClassifierError
from classifier.models import create_model, list_models
from classifier.predict import Classifier

__all__ = ["Classifier", "ClassifierError", "create_model", "list_models"]
