"""The files a training run leaves for people and for the report, in its output folder:

  metrics.jsonl           one line per epoch: train loss and accuracy, learning rate; val loss
                          and accuracy after evaluated epochs (--eval-every)
  val_predictions.jsonl   one line per validation image, from the best checkpoint's epoch:
                          path, true label, the probability of every class
  events.jsonl            one line per event of the run as it happens (fitting.Run.emit): start,
                          plan, step (at most twice a second), epoch, end, stopped, error; what a
                          page or a program follows while the run goes on

A run folder may move, or be copied to another machine, with its photos (a studio project): its
checkpoints keep its photos and exclusion list relative to it too, and `relocated` finds them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from classifier.checkpoint import load_checkpoint
from classifier.data import find_photos
from classifier.errors import ClassifierError
from classifier.images import DecodedImages, Preprocessing
from classifier.inference import Classifier
from classifier.tta import decode_sizes

METRICS_FILE = "metrics.jsonl"
PREDICTIONS_FILE = "val_predictions.jsonl"
EVENTS_FILE = "events.jsonl"
MOVABLE = ("data", "exclude")  # the settings that name files a run folder may move along with


def relative_paths(settings: dict) -> dict:
    """A run's MOVABLE settings relative to its output folder (what its checkpoints keep as
    "relative_paths"; for older checkpoints, what their settings imply). A value that names no
    file, such as torchvision:NAME, gives a place that is never there, so relocated keeps it."""
    return {name: os.path.relpath(settings[name], settings["out"]) for name in MOVABLE if settings.get(name)}


def relocated(checkpoint: dict, path: str | Path) -> dict:
    """The settings of the run whose checkpoint is at `path`, with its folders as they are now. A
    run folder moved or copied elsewhere (the checkpoint's folder is not `out` but holds the run's
    metrics, or `out` is gone) goes on where the checkpoint is, and takes each MOVABLE file from
    the same place relative to it when it is there (a project copied whole), else from where it was."""
    settings, folder = dict(checkpoint.get("config") or {}), Path(path).parent
    home = Path(settings.get("out") or folder)
    if home.resolve() == folder.resolve() or (home.is_dir() and not (folder / METRICS_FILE).is_file()):
        return settings  # at home, or a checkpoint copied out of its run folder alone
    relative = checkpoint.get("relative_paths") or relative_paths(settings)
    moved = {name: os.path.normpath(folder / place) for name, place in relative.items() if (folder / place).exists()}
    return {**settings, "out": str(folder), **moved}


def carry_over(run_dir: str | Path, out: Path) -> None:
    """A resumed run going on in another folder (train.py --resume --out) first copies there the
    files of its run folder that one lacks (best.pt, metrics.jsonl, events.jsonl ...); none is
    written over."""
    run_dir = Path(run_dir)
    if run_dir.resolve() == out.resolve() or not run_dir.is_dir():
        return
    for file in run_dir.iterdir():
        if file.is_file() and not (out / file.name).exists():
            shutil.copy2(file, out / file.name)


def append_metrics(run_dir: str | Path, metrics: dict) -> None:
    with open(Path(run_dir) / METRICS_FILE, "a") as log:
        log.write(json.dumps(metrics) + "\n")


class EventLog:
    """A listener for a run's events: each one a JSON line of run_dir/events.jsonl, written as it
    happens (a new run starts the file afresh, a resumed one appends), and handed on to `also`."""

    def __init__(self, run_dir: str | Path, append: bool = False, also: Callable[[dict], None] | None = None):
        self.path, self.mode, self.also = Path(run_dir) / EVENTS_FILE, "a" if append else "w", also

    def __call__(self, event: dict) -> None:
        try:
            with open(self.path, self.mode) as log:
                log.write(json.dumps(event) + "\n")
            self.mode = "a"
        except OSError:  # no folder yet (the run failed before making it): the event still reaches `also`
            if event["event"] != "error":
                raise
        if self.also:
            self.also(event)


def read_events(run_dir: str | Path) -> list[dict]:
    """The events of run_dir's latest run so far (a line still being written is left out)."""
    path = Path(run_dir) / EVENTS_FILE
    events = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return events


def write_predictions(run_dir: str | Path, val_sizes: list[DecodedImages], tta: bool = False,
                      device: str = "auto", batch_size: int = 256,
                      probabilities: torch.Tensor | None = None) -> Path:
    """Classify the decoded validation images (val_sizes: at each test-time size, as
    decode_sizes gives them) with run_dir/best.pt (through Classifier, the one inference
    path) and write val_predictions.jsonl: one JSON line per image with its
    path, true label, every class's probability as predict gives it (divided by best.pt's
    calibration temperature), that temperature, and best.pt's epoch. Training passes the
    `probabilities` it already computed for best.pt, sparing a second pass over val."""
    checkpoint = Path(run_dir) / "best.pt"
    saved = load_checkpoint(checkpoint)
    classes, temperature, epoch = saved["classes"], float(saved.get("temperature", 1.0)), saved["epoch"]
    val_images = val_sizes[0]
    if probabilities is None:  # (the model is built only then: seconds for a pretrained network)
        classifier = Classifier.load(checkpoint, device, saved.get("config", {}).get("precision", "fp32"),
                                     fuse=False)  # as training evaluated it: the same numbers, to the last bit
        probabilities = torch.cat([classifier.probabilities([v.images[i:i + batch_size] for v in val_sizes], tta)
                                   for i in range(0, len(val_images), batch_size)])
    probabilities = probabilities.double()
    path = Path(run_dir) / PREDICTIONS_FILE
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as file:
        for image, label, row in zip(val_images.paths, val_images.labels.tolist(), probabilities.tolist()):
            file.write(json.dumps({"path": os.path.abspath(image), "label": classes[label],
                                   "label_index": label, "epoch": epoch, "temperature": temperature,
                                   "probabilities": dict(zip(classes, row))}) + "\n")
    os.replace(temporary, path)
    return path


def predict_validation(run_dir: str | Path) -> Path:
    """Write val_predictions.jsonl for a run that has best.pt but none (an older or stopped run):
    the validation images are found again from the data settings best.pt records (where they
    are now, for a run folder moved with its photos: relocated)."""
    checkpoint = load_checkpoint(Path(run_dir) / "best.pt")
    config = relocated(checkpoint, Path(run_dir) / "best.pt")
    dataset, _ = find_photos(config["data"], config["val_fraction"], config["seed"], config.get("exclude", ""))
    if dataset.classes != checkpoint["classes"]:
        raise ClassifierError(f"{config['data']} now has classes {dataset.classes}, but "
                              f"{run_dir}/best.pt was trained on {checkpoint['classes']}")
    tta = config.get("tta", False)
    val_sizes = decode_sizes(dataset.val.paths, dataset.val.labels, Preprocessing(**checkpoint["preprocessing"]),
                             tta, config.get("cache_dir") or None, desc="decoding val")
    return write_predictions(run_dir, val_sizes, tta)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch metrics of the latest run in run_dir (an earlier run's lines are dropped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ClassifierError(f"{run_dir}: no {METRICS_FILE}; pass the folder a training run "
                              f"wrote to (train.py --out)")
    runs: list[list[dict]] = [[]]
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            if runs[-1] and entry["epoch"] <= runs[-1][-1]["epoch"]:
                runs.append([])  # the epoch count started again: a new run in the same folder
            runs[-1].append(entry)
    if not runs[-1]:
        raise ClassifierError(f"{path}: holds no epochs yet")
    return runs[-1]


@dataclass
class Predictions:
    """Validation predictions: probabilities [N, classes] (after the calibration temperature),
    true labels [N], image paths."""

    classes: list[str]
    paths: list[str]
    labels: torch.Tensor
    probabilities: torch.Tensor
    epoch: int
    temperature: float = 1.0

    @property
    def uncalibrated(self) -> torch.Tensor:
        """The probabilities before the temperature: softmax(z / T) ** T, renormalized, is softmax(z)."""
        raw = self.probabilities.pow(self.temperature)
        return raw / raw.sum(dim=1, keepdim=True)

    @property
    def predicted(self) -> torch.Tensor:
        return self.probabilities.argmax(dim=1)

    @property
    def confidence(self) -> torch.Tensor:
        return self.probabilities.amax(dim=1)


def read_predictions(run_dir: str | Path) -> Predictions:
    """The run's validation predictions; made from best.pt first when training did not write
    them, or wrote them before best.pt last changed (a run stopped early)."""
    path, best = Path(run_dir) / PREDICTIONS_FILE, Path(run_dir) / "best.pt"
    if best.is_file() and (not path.is_file() or path.stat().st_mtime < best.stat().st_mtime):
        predict_validation(run_dir)
    elif not path.is_file():
        raise ClassifierError(f"{run_dir}: neither {PREDICTIONS_FILE} nor best.pt; pass the "
                              f"folder a training run wrote to (train.py --out)")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ClassifierError(f"{path}: holds no predictions")
    classes = list(rows[0]["probabilities"])
    return Predictions(
        classes, [r["path"] for r in rows], torch.tensor([r["label_index"] for r in rows]),
        torch.tensor([[r["probabilities"][c] for c in classes] for r in rows], dtype=torch.float64),
        rows[0]["epoch"], rows[0].get("temperature", 1.0))


