"""One self-describing checkpoint file: save atomically, load without running code.

A checkpoint is a dict of plain data and tensors:

  format         CHECKPOINT_FORMAT, so a foreign file is recognised as such
  model          model_config: {"name", "num_classes", ...builder arguments}
  state_dict     the weights
  classes        class names, in output order
  preprocessing  Preprocessing.to_dict(): image size, resize mode, normalization
  temperature    the calibration temperature applied to logits by predict (1.0: none)
  epoch, metrics the epoch just finished and its metrics
  config         the training configuration (TrainConfig as a dict)
  training_state optimizer, scheduler, RNG and best-so-far (last.pt only; enough to resume)
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

from classifier.errors import ClassifierError
from classifier.models import create_model

CHECKPOINT_FORMAT = "catsdogs-classifier/1"


def atomic_save(obj, path: str | Path) -> None:
    """torch.save to a temporary file, fsync, then rename over `path`.

    Killing the process at any moment leaves either the old file or the new one, never a
    half-written one. A full disk or an unwritable folder is a ClassifierError naming the file.
    """
    path, temporary = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(handle, "wb", buffering=0) as file:  # unbuffered: write errors surface
            torch.save(obj, file)
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        if temporary:
            Path(temporary).unlink(missing_ok=True)
        cause = error if isinstance(error, OSError) else error.__context__  # torch wraps write errors
        if isinstance(cause, OSError):
            raise ClassifierError(f"{path}: could not save ({cause.strerror or cause}); "
                                  f"the previous {path.name}, if any, is unchanged") from None
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save_checkpoint(path: str | Path, model: nn.Module, classes: list[str], preprocessing: dict,
                    **extra) -> None:
    """Save a model with everything needed to use it; `extra` adds epoch, metrics, etc.

    Weights that hold NaN or infinity are refused, so a diverged run never replaces a good file.
    """
    model = getattr(model, "module", model)  # unwrap DistributedDataParallel
    broken = [k for k, v in model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()]
    if broken:
        raise ClassifierError(
            f"{path}: not saved, the weights hold NaN or infinite values (e.g. {broken[0]}); the "
            f"previous file is kept. Training diverged: try a lower --lr")
    checkpoint = {
        "format": CHECKPOINT_FORMAT,
        "model": dict(model.model_config),
        "state_dict": model.state_dict(),
        "classes": list(classes),
        "preprocessing": dict(preprocessing),
        "temperature": 1.0,
        **extra,
    }
    atomic_save(checkpoint, path)


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


def load_weights(model: nn.Module, state_dict: dict, path: str | Path, strict: bool = True) -> list[str]:
    """Load weights, turning shape or name mismatches into one readable error.

    With strict=False, tensors whose shapes differ are left out (and named in the returned
    list) instead of failing; that is how fine-tuning keeps everything but the output layer.
    """
    own = model.state_dict()
    mismatched = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if strict and (mismatched or missing or unexpected):
        problems = []
        if mismatched:
            k = mismatched[0]
            problems.append(f"{len(mismatched)} tensor(s) of another shape, e.g. {k}: "
                            f"{tuple(state_dict[k].shape)} in the file, {tuple(own[k].shape)} in the model")
        if missing:
            problems.append(f"{len(missing)} missing, e.g. {missing[0]}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        raise ClassifierError(f"{path}: weights do not fit this model ({'; '.join(problems)})")
    kept = {k: v for k, v in state_dict.items() if k in own and k not in mismatched}
    model.load_state_dict(kept, strict=False)
    return mismatched + [k for k in missing if k not in mismatched]
