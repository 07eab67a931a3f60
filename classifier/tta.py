"""Test-time augmentation (TTA): each photo seen several ways, the model's outputs averaged.

A photo's views are its decodings at the image size and at each of the checkpoint's test-time
sizes (`Preprocessing.tta_sizes`: larger sizes show more detail), each with its mirror image.
With `Preprocessing.tta_below` under 1, only photos the first view leaves unsure (its largest
softmax probability below that) get the other views: most photos cost one pass. Training's
evaluation, predict, serve and exported ONNX models all average through `average`, so a model
is measured exactly as it is used.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from classifier.images import DecodedImages, Preprocessing, decode_images
from classifier.neither import NeitherRule
from classifier.runtime import autocast

Batches = torch.Tensor | Sequence[torch.Tensor]  # one batch, or the same photos at each decoding


def decodings(preprocessing: Preprocessing, tta: bool) -> list[Preprocessing]:
    """How a photo is decoded: at the image size and, with `tta`, at each test-time size."""
    return [preprocessing] + [replace(preprocessing, image_size=size, tta_sizes=())
                              for size in preprocessing.tta_sizes if tta]


def decode_sizes(paths: Sequence[str], labels: Sequence[int], preprocessing: Preprocessing, tta: bool,
                 cache_dir: str | Path | None = None, workers: int | None = None,
                 desc: str = "decoding") -> list[DecodedImages]:
    """decode_images at each decoding: aligned splits (an unreadable file is skipped at every size)."""
    return [decode_images(paths, labels, p, cache_dir, workers, desc=desc + (f" at {p.image_size} px" if i else ""))
            for i, p in enumerate(decodings(preprocessing, tta))]


def as_list(batches: Batches) -> list[torch.Tensor]:
    return list(batches) if isinstance(batches, (list, tuple)) else [batches]


def views(batches: Batches, flip: bool) -> list[torch.Tensor]:
    """Every view of a batch: each decoding, and with `flip` its mirror image too."""
    return [view for x in as_list(batches) for view in ([x, x.flip(-1)] if flip else [x])]


def average(forward: Callable[[torch.Tensor], tuple], inputs: list[torch.Tensor], below: float = 1.0) -> tuple:
    """Run `forward` (one view -> a tuple of outputs, the first the logits; some may be None) on
    the views and average each output in float32. With `below` under 1, the views after the first
    run only for the photos whose first-view softmax probability is below it."""
    first = tuple(None if o is None else o.float() for o in forward(inputs[0]))
    unsure = first[0].softmax(1).amax(1) < below if below < 1 else torch.ones(len(first[0]), dtype=torch.bool)
    if len(inputs) == 1 or not unsure.any():
        return first
    everyone = bool(unsure.all())
    runs = [forward(view if everyone else view[unsure.to(view.device)]) for view in inputs[1:]]
    outputs = []
    for own, rest in zip(first, zip(*runs)):
        if own is not None:
            own = own.clone()
            own[unsure] = (own[unsure] + sum(o.float() for o in rest)) / len(inputs)
        outputs.append(own)
    return tuple(outputs)


def model_outputs(model: nn.Module, batches: Batches, preprocessing: Preprocessing, flip: bool = False,
                  precision: str = "fp32", neither: NeitherRule | None = None) -> tuple:
    """uint8 batches (on the model's device; one per decoding) -> (logits, ImageNet logits or None,
    similarity or None), averaged over the views. With a `neither` rule that uses them, a
    pretrained backbone also gives its original ImageNet classifier's logits from the same pass
    (Backbone.forward_all), and each view's similarity to the training photos (neither.py)."""

    def forward(x):
        if neither is None or not neither.uses_imagenet:
            return model(x), None, None
        logits, imagenet_logits, embedding = model.forward_all(x)
        return logits, imagenet_logits, neither.similarity(embedding)

    inputs = [preprocessing.normalize(x) for x in views(batches, flip)]
    with autocast(inputs[0].device, precision):
        return average(forward, inputs, preprocessing.tta_below)
