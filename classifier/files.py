"""Files that must never be half-written or silently wrong: atomic saves and weight loading.

Everything here is about bytes on disk and tensors in a state dict; it knows nothing of models,
data or training, so every other module can use it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from classifier.errors import ClassifierError


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


def check_writable(folder: Path) -> None:
    """Fail before training, not after an hour, if checkpoints cannot be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_bytes(b"0" * 4096)
        probe.unlink()
    except OSError as error:
        raise ClassifierError(f"{folder}: cannot write checkpoints there ({error.strerror or error})") from None


def check_free_space(folder: Path, model: nn.Module) -> None:
    """Fail before training if the disk cannot hold best.pt, last.pt (weights plus optimizer
    state) and the temporary copy written while saving: about four times the weights."""
    need = 4 * sum(t.numel() * t.element_size() for t in model.state_dict().values())
    free = shutil.disk_usage(folder).free
    if free < need:
        raise ClassifierError(f"{folder}: only {free / 1e6:.1f} MB free, checkpoints need about "
                              f"{need / 1e6:.1f} MB; free some space or choose another --out")


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a file (tensors only), or a ClassifierError saying what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise ClassifierError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise ClassifierError(f"{path}: not a readable weights file ({reason})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ClassifierError(f"{path}: holds no state dict of tensors")
    return state


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


def load_in_order(target: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy tensors into `target` by position (names may differ); every shape must match."""
    own = target.state_dict()
    if len(own) != len(state):
        raise ClassifierError(f"{source}: {len(state)} tensors, but the model has {len(own)}; "
                              f"wrong weights file for this architecture")
    for (name, mine), (theirs_name, theirs) in zip(own.items(), state.items()):
        if mine.shape != theirs.shape:
            raise ClassifierError(f"{source}: tensor {theirs_name} has shape {tuple(theirs.shape)}, "
                                  f"the model expects {tuple(mine.shape)} for {name}; wrong weights file")
    target.load_state_dict(dict(zip(own, state.values())))
