"""A dogs-vs-cats (or any-folder-of-classes) image classifier in plain PyTorch.

Where things live (imports run down this list, never up):
  commands   train.py predict.py serve.py audit.py report.py explain.py export.py (each has main(argv))
  run        loop.py (the training loop)  inference.py (Classifier: photos in, probabilities out)
             config.py (TrainConfig)  runs.py (metrics.jsonl, val_predictions.jsonl)  gradcam.py
  pieces     data.py (datasets, splits, batches)  images.py (decode, cache)  augment.py  tta.py
             features.py (frozen-feature cache)  calibration.py  neither.py  checkpoint.py
             models.py backbones.py (every model)  distributed.py  runtime.py  progress.py plots.py
  base       registry.py (create_model)  recipes.py (every default)  files.py  errors.py  cli.py
  start-up   launch.py (the malloc settings every command starts with)
"""

from classifier.launch import tune_allocator

tune_allocator()  # first, before torch loads: a command may restart itself with faster malloc settings

from classifier.errors import ClassifierError  # noqa: E402
from classifier.inference import Classifier  # noqa: E402
from classifier.models import create_model, list_models  # noqa: E402

__all__ = ["Classifier", "ClassifierError", "create_model", "list_models"]
