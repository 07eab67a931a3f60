"""A dogs-vs-cats (or any-folder-of-classes) image classifier in plain PyTorch.

Where things live (imports run down this list, never up):
  commands   train.py predict.py serve.py audit.py report.py explain.py export.py (each has main(argv))
  run        loop.py (the training loop)  inference.py (Classifier: photos in, probabilities out)
             config.py (TrainConfig)  runs.py (metrics.jsonl, val_predictions.jsonl)  gradcam.py
             scan.py (the audit's one pass over the photos)  checks.py (every audit check, one list)
  pieces     data.py (datasets, splits, batches)  images.py (decode, cache)  augment.py  tta.py
             features.py (frozen-feature cache)  calibration.py  neither.py  checkpoint.py
             models.py backbones.py (every model)  distributed.py  runtime.py  progress.py plots.py
             pages.py (offline HTML pages: audit, report; static/pages.css)
  base       registry.py (create_model)  recipes.py (every default)  files.py  errors.py  cli.py
"""

from classifier.errors import ClassifierError
from classifier.inference import Classifier
from classifier.models import create_model, list_models

__all__ = ["Classifier", "ClassifierError", "create_model", "list_models"]
