"""One self-describing checkpoint file: save atomically, load without running code.

A checkpoint is a dict of plain data and tensors:

  format         CHECKPOINT_FORMAT, so a foreign file is recognised as such
  model          model_config: {"name", "num_classes", ...builder arguments}
  state_dict     the weights
  classes        class names, in output order
  preprocessing  Preprocessing.to_dict(): image size, resize mode, normalization
  temperature    the calibration temperature applied to logits by predict (1.0: none)
  neither        the rule predict flags "neither" photos with (NeitherRule.to_dict, neither.py)
  neither_bank   the training photos' features that rule compares a photo with (its similarity test)
  saved_at       when the file was written (UTC, ISO 8601)
  epoch, metrics the epoch just finished and its metrics
  config         the training configuration (TrainConfig as a dict)
  relative_paths its data and exclude settings relative to its out folder, so that a run folder
                 moved or copied with its photos finds them (runs.relocated)
  training_state optimizer, scheduler, RNG and best-so-far (last.pt only; enough to resume)
"""

from __future__ import annotations

import datetime
import zipfile
from pathlib import Path

import torch
from torch import nn

from classifier.errors import ClassifierError
from classifier.files import atomic_save, load_weights
from classifier.models import create_model

CHECKPOINT_FORMAT = "catsdogs-classifier/1"


def save_checkpoint(path: str | Path, model: nn.Module, classes: list[str], preprocessing: dict,
                    **extra) -> None:
    """Save a model with everything needed to use it; `extra` adds epoch, metrics, etc.

    Weights that hold NaN or infinity are refused, so a diverged run never replaces a good file.
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    broken = nonfinite(model.state_dict())
    if broken:
        raise ClassifierError(
            f"{path}: not saved, the weights hold NaN or infinite values (e.g. {broken}); the "
            f"previous file is kept. Training diverged: try a lower --lr")
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model": dict(model.model_config),
        "state_dict": model.state_dict(),
        "classes": list(classes),
        "preprocessing": dict(preprocessing),
        "temperature": 1.0,
        "saved_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }
    atomic_save(checkpoint, path)


def nonfinite(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The name of a floating-point tensor that holds NaN or infinity, or None. All tensors are
    checked in one pass (one check per tensor costs hundreds of small operations a save: on a
    busy CPU, more than the rest of a short epoch)."""
    floats = {name: value for name, value in state_dict.items() if value.is_floating_point()}
    if not floats or torch.cat([value.reshape(-1).float() for value in floats.values()]).isfinite().all():
        return None
    return next(name for name, value in floats.items() if not value.isfinite().all())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint, refusing anything that is not plain data and tensors.

    Every refusal is one ClassifierError naming the file: missing, truncated, corrupted (the
    zip checksums torch.load does not verify), code inside the pickle, not this project's,
    or incomplete.
    """
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"{path}: no such checkpoint (train one with `python train.py`)")
    _verify_checksums(path)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        message = str(error)
        if "weights_only" in message or "Unsupported global" in message:
            reason = "it contains code or objects other than tensors and plain data; refused"
        else:
            reason = (f"not a readable checkpoint: truncated, corrupted or not saved by torch.save "
                      f"({message.splitlines()[0][:200] if message else type(error).__name__})")
        raise ClassifierError(f"{path}: {reason}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ClassifierError(f"{path}: not a checkpoint of this project (no {CHECKPOINT_FORMAT!r} format tag)")
    _check_contents(checkpoint, path)
    return checkpoint


def _verify_checksums(path: Path) -> None:
    """A checkpoint is a zip whose members carry CRC-32s: check them all before loading."""
    if not zipfile.is_zipfile(path):
        return  # truncated, legacy or foreign: torch.load says which
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        problem = bad and f"{bad} fails its checksum"
    except Exception as error:
        problem = str(error).splitlines()[0] if str(error) else type(error).__name__
    if problem:
        raise ClassifierError(f"{path}: corrupted checkpoint ({problem}); use another copy")


def _check_contents(checkpoint: dict, path: Path) -> None:
    """The fields every checkpoint needs, and class names that match the model's outputs."""
    model, classes = checkpoint.get("model"), checkpoint.get("classes")
    for key, kind in (("model", dict), ("state_dict", dict), ("classes", list), ("preprocessing", dict)):
        if not isinstance(checkpoint.get(key), kind):
            raise ClassifierError(f"{path}: incomplete checkpoint ({key!r} missing or not a {kind.__name__})")
    if model.get("num_classes") != len(classes):
        raise ClassifierError(f"{path}: names {len(classes)} classes {classes} but its model has "
                              f"{model.get('num_classes')} outputs; the file was altered or mixed up")


def model_from_checkpoint(checkpoint: dict, path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the model a checkpoint describes and load its weights."""
    try:
        model = create_model(**checkpoint["model"])
    except ClassifierError as error:
        raise ClassifierError(f"{path}: {error}") from None
    load_weights(model, checkpoint["state_dict"], path)
    return model
