"""The cache of frozen features: run a backbone's frozen stages once, train the rest on their outputs.

With `--finetune probe` or `--finetune last` the early stages of a pretrained backbone never
change, so their output for a given input never changes either. `compute_features` runs them
once per image (and per view: the image, its mirror image, then random crops and flips drawn
once), keeps the results in memory as float16, and training then runs only the model's `tail`
on them: an epoch takes seconds instead of minutes. Validation keeps each image's views
together ([N, V, ...]) so evaluation averages them, as `predict --tta` does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from classifier.augment import Augmentation, augment
from classifier.images import DecodedImages, Preprocessing
from classifier.progress import progress
from classifier.runtime import autocast, fuse_batch_norms

FEATURE_DTYPE = torch.float16  # halves the memory; the tail computes in float32


@dataclass
class Features:
    """A split's frozen features: values [N, V, C, H, W] (V views of each image), labels [N]."""

    values: torch.Tensor
    labels: torch.Tensor
    paths: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def examples(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs [N * V, ...], labels): each view a training example with its image's label."""
        views = self.values.shape[1]
        return self.values.flatten(0, 1), self.labels.repeat_interleave(views)


def uses_cached_features(model: nn.Module) -> bool:
    """Whether the model has frozen leading stages whose outputs training can cache."""
    return getattr(model, "frozen_stages", 0) > 0


def feature_views(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Cached [B, V, ...] batches, one per test-time size -> every view as a [B, ...] batch."""
    return [features[:, v].float() for features in batches for v in range(features.shape[1])]


@torch.inference_mode()
def compute_features(model: nn.Module, decoded: DecodedImages, preprocessing: Preprocessing,
                     device: torch.device, views: int = 1, flip: bool = False,
                     policy: Augmentation | None = None, seed: int = 0, batch_size: int = 64,
                     precision: str = "fp32", desc: str = "features") -> Features:
    """The frozen stages' outputs for every image.

    View 0 is the image itself; with `flip` view 1 is its mirror image; further views (up to
    `views`) are random crops and flips drawn from `policy`, seeded by (seed, view).
    The frozen stages run in `precision` (bf16: 2-3x faster on CPUs with AVX512-BF16), with
    batch norms folded into the convolutions (runtime.fuse_batch_norms) and weights and inputs
    in NHWC memory order, which runs depthwise convolutions faster on CPUs. When every stage is
    frozen (a linear probe, whose tail starts by averaging each map), the maps are averaged here
    once: the same numbers, and epochs 81x cheaper at 272 px.
    """
    fmt = torch.channels_last
    frozen = fuse_batch_norms(model).to(memory_format=fmt)  # the frozen stages are in eval mode anyway
    probe = model.frozen_stages == len(model.stages)
    images, chunks = decoded.images, []
    for start in progress(range(0, len(images), batch_size), desc, unit="batch"):
        batch = images[start:start + batch_size].to(device)
        inputs = [batch.float().div_(255)]
        if flip:
            inputs.append(inputs[0].flip(-1))
        for view in range(len(inputs), views):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + view * 10_007 + start)
            inputs.append(augment(batch, generator, policy))
        with autocast(device, precision):
            outputs = [frozen.frozen_features(preprocessing.normalize(x).contiguous(memory_format=fmt))
                       for x in inputs]
        if probe:
            outputs = [output.float().mean((-2, -1), keepdim=True) for output in outputs]
        chunks.append(torch.stack(outputs, 1).to("cpu", FEATURE_DTYPE).contiguous())
    values = torch.cat(chunks) if chunks else torch.empty(0)
    return Features(values, decoded.labels, decoded.paths)
