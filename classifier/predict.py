"""Inference: a checkpoint and photos in, class probabilities out.

    from classifier import Classifier
    model = Classifier.load("checkpoints/best.pt")
    model.predict("cat.jpg")            # {"cat": 0.97, "dog": 0.03}

`logits_for` is the one place where a batch of decoded images becomes model outputs; the
training loop's evaluation calls it too, so a model is measured exactly as it is used.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
from PIL import Image
from torch import nn

from classifier.calibration import energy_score, imagenet_score
from classifier.checkpoint import load_checkpoint, model_from_checkpoint
from classifier.data import Preprocessing, walk_images, decode_stream
from classifier.errors import ClassifierError
from classifier.runtime import autocast, fuse_batch_norms, resolve_precision, select_device


Images = torch.Tensor | list[torch.Tensor]  # a batch, or the same batch at each of Preprocessing.sizes


def logits_for(model: nn.Module, images: Images, preprocessing: Preprocessing,
               tta: bool = False, precision: str = "fp32") -> torch.Tensor:
    """uint8 images [N, 3, S, S] (on the model's device), or a list of them at several sizes
    -> logits [N, classes], in float32, averaged over the sizes.

    tta also averages the logits of each image and its mirror image.
    """
    return outputs_for(model, images, preprocessing, tta, precision)[0]


def outputs_for(model: nn.Module, images: Images, preprocessing: Preprocessing, tta: bool = False,
                precision: str = "fp32", imagenet: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits, ImageNet logits or None): with `imagenet`, a pretrained backbone also gives
    its original ImageNet classifier's logits (Backbone.forward_all), from the same pass."""
    batches = [preprocessing.normalize(x) for x in (images if isinstance(images, (list, tuple)) else [images])]
    forward = model.forward_all if imagenet else lambda inputs: (model(inputs), None)
    with autocast(batches[0].device, precision):
        runs = [forward(view) for x in batches for view in ([x, x.flip(-1)] if tta else [x])]
    average = [None if out[0] is None else sum(o.float() for o in out) / len(out) for out in zip(*runs)]
    return average[0], average[1]


@dataclass
class Classifier:
    """A trained model ready to use: weights, class names, preprocessing and temperature."""

    model: nn.Module
    classes: list[str]
    preprocessing: Preprocessing
    temperature: float = 1.0
    device: torch.device = torch.device("cpu")
    neither: dict | None = None  # {"method": "imagenet" or "energy", "threshold"}: see calibration.py
    precision: str = "fp32"  # of the forward pass: fp32, bf16 or fp16 (see runtime.autocast)
    tta: bool = False  # the default of every method's `tta`: how training evaluated the model, which
    #                    is what its accuracy, temperature and neither threshold were measured on

    @classmethod
    def load(cls, path: str | Path = "checkpoints/best.pt", device: str = "auto",
             precision: str = "auto", fuse: bool = True) -> "Classifier":
        """A checkpoint (.pt), or an exported ONNX model (.onnx, run by onnxruntime on the CPU).
        precision auto: bf16 where the device computes it natively, as training does.
        fuse: fold batch norms into convolutions (runtime.fuse_batch_norms): faster, same
        outputs; off to see the layers as trained (explain)."""
        if Path(path).suffix.lower() == ".onnx":
            from classifier.export import OnnxClassifier

            return OnnxClassifier.load(path)
        device = select_device(device)
        checkpoint = load_checkpoint(path)
        model = model_from_checkpoint(checkpoint, path).eval()
        model = (fuse_batch_norms(model) if fuse else model).to(device, memory_format=torch.channels_last)
        return cls(model, checkpoint["classes"], Preprocessing(**checkpoint["preprocessing"]),
                   float(checkpoint.get("temperature", 1.0)), device, checkpoint.get("neither"),
                   resolve_precision(precision, device), bool(checkpoint.get("config", {}).get("tta", False)))

    def decode(self, source: str | Path | Image.Image, tta: bool | None = None) -> list[torch.Tensor]:
        """One photo -> the uint8 tensors a prediction takes: at the image size and, with
        `tta`, at each of the model's test-time sizes. tta None: self.tta, in every method."""
        return [p.decode(source) for p in self.preprocessing.sizes(self.tta if tta is None else tta)]

    def probabilities(self, images: Images, tta: bool | None = None) -> torch.Tensor:
        """uint8 images [N, 3, S, S] (or a list of them, one per test-time size) -> probabilities [N, classes]."""
        return self.outputs(images, tta, known=False)[0]

    @torch.inference_mode()
    def outputs(self, images: Images, tta: bool | None = None, known: bool = True):
        """uint8 images -> (probabilities [N, classes], known scores [N] or None): how much each
        image looks like the trained classes; below self.neither["threshold"] it is neither."""
        known = known and self.neither is not None
        imagenet = known and self.neither["method"] == "imagenet"
        logits, imagenet_logits = self.logits(images, tta, imagenet)
        probabilities = (logits / self.temperature).softmax(dim=1).cpu()
        if not known:
            return probabilities, None
        return probabilities, (imagenet_score(imagenet_logits) if imagenet else energy_score(logits)).cpu()

    def logits(self, images: Images, tta: bool | None = None, imagenet: bool = False):
        """uint8 images -> (logits, ImageNet logits or None), float32, before the temperature."""
        tta = self.tta if tta is None else tta
        images = [x.to(self.device).contiguous(memory_format=torch.channels_last)  # as the weights
                  for x in (images if isinstance(images, (list, tuple)) else [images])]
        return outputs_for(self.model, images, self.preprocessing, tta, self.precision, imagenet)

    def predict(self, image: str | Path | Image.Image, tta: bool | None = None) -> dict[str, float]:
        """One photo (a path or a PIL image) -> {class name: probability}."""
        probabilities = self.probabilities([x[None] for x in self.decode(image, tta)], tta)[0]
        return dict(zip(self.classes, probabilities.tolist()))

    def predict_paths(self, paths: Iterable[str], batch_size: int = 64, tta: bool | None = None,
                      workers: int | None = None) -> Iterator[dict]:
        """Yield one result per path, in order: {"path", "label", "probabilities"} or
        {"path", "error"}. Decoding runs ahead in threads; one bad file stops nothing."""
        pending: list[tuple[str, list[torch.Tensor]]] = []

        def flush():
            sizes = zip(*(tensors for _, tensors in pending))  # each photo's tensors, regrouped by size
            probabilities, scores = self.outputs([torch.stack(batch) for batch in sizes], tta)
            for i, ((path, _), row) in enumerate(zip(pending, probabilities.tolist())):
                result = {"path": path, "label": self.classes[max(range(len(row)), key=row.__getitem__)],
                          "probabilities": {c: round(p, 6) for c, p in zip(self.classes, row)}}
                if scores is not None:  # "neither": the photo shows none of the trained classes
                    result["known_score"] = round(scores[i].item(), 6)
                    result["neither"] = scores[i].item() < self.neither["threshold"]
                    result["label"] = "neither" if result["neither"] else result["label"]
                yield result
            pending.clear()

        for path, tensors, error in decode_stream(paths, lambda source: self.decode(source, tta), workers):
            if error is not None:
                if pending:
                    yield from flush()
                yield {"path": str(path), "error": error}
                continue
            pending.append((str(path), tensors))
            if len(pending) == batch_size:
                yield from flush()
        if pending:
            yield from flush()


def expand_paths(paths: Iterable[str]) -> Iterator[str]:
    """Files as given; folders expanded recursively to the image files inside."""
    for path in paths:
        if Path(path).is_dir():
            yield from walk_images(Path(path))
        else:
            yield path


def completed_paths(output: str | Path) -> set[str]:
    """The paths already in a results file (one JSON object per line, as --output writes it),
    so that a rerun skips them. A last line cut short by a killed run is removed first."""
    output, done, complete = Path(output), set(), 0
    if not output.exists():
        return done
    with open(output, "rb") as file:
        for number, line in enumerate(file, 1):
            if not line.endswith(b"\n"):
                break  # the last line of an interrupted write: that image is classified again
            try:
                done.add(json.loads(line)["path"])
            except (ValueError, KeyError, TypeError):
                raise ClassifierError(f"{output}, line {number}: not a result written by predict; "
                                      f"choose another --output file") from None
            complete += len(line)
    if complete < output.stat().st_size:
        with open(output, "r+b") as file:
            file.truncate(complete)
    return done


def format_result(result: dict) -> str:
    """One readable line: label, every class probability, path."""
    if "error" in result:
        return f"error  {result['error']}"
    probabilities = "  ".join(f"{c} {p:.3f}" for c, p in result["probabilities"].items())
    return f"{result['label']:<8} {probabilities}  {result['path']}"


if __name__ == "__main__":
    from classifier.cli import predict_main

    sys.exit(predict_main())
