"""Data augmentation on whole batches of uint8 tensors (the airbench way): random resized crops
and flips drawn per image and applied to the batch by one affine resampling, and MixUp/CutMix.

Randomness comes from a generator the training loop seeds by (seed, epoch, step), so a batch
gets the same augmentation on any device, in any process of a distributed run, and on resume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Augmentation:
    """Random resized crop (scale = fraction of the area kept), aspect jitter and flip."""

    min_scale: float = 0.35
    max_aspect: float = 4 / 3
    flip: bool = True

    def mean_zoom(self) -> float:
        """How much larger things look in a crop than in the whole image, on average:
        E[area ** -0.5] for area uniform in [min_scale, 1]. Testing at image size x this
        shows the model things at the size it trained on (Touvron et al., FixRes, 2019)."""
        root = math.sqrt(self.min_scale)
        return 2 / (1 + root) if self.min_scale < 1 else 1.0

    def source_size(self, size: int) -> int:
        """The size to decode photos at for `size`-pixel crops: size x mean_zoom, at which a
        whole photo shows things as large as the crops do, so crops keep the detail that a
        photo decoded at that size (a test-time size) shows."""
        return max(size, round(size * self.mean_zoom()))


def augment(images: torch.Tensor, generator: torch.Generator, policy: Augmentation,
            rank: int = 0, world_size: int = 1, size: int | None = None) -> torch.Tensor:
    """Augment a whole uint8 batch at once; returns float images in [0, 1] of `size` pixels
    square (default: the input's size).

    Each image gets its own crop and flip, drawn on the CPU from `generator` (so a seed
    gives the same batch on any device) and applied together by one affine resampling.
    Cutting `size`-pixel crops from images decoded larger keeps the detail that upscaling a
    crop of a `size`-pixel image would blur.
    In a distributed run, `images` is this rank's slice of a global batch: the crops and
    flips are drawn for the whole global batch and sliced alike, so every image gets the
    same augmentation whichever rank handles it.
    """
    n = images.shape[0] * world_size
    area = torch.empty(n).uniform_(policy.min_scale, 1.0, generator=generator)
    log_aspect = torch.empty(n).uniform_(-math.log(policy.max_aspect), math.log(policy.max_aspect),
                                         generator=generator)
    width = (area * log_aspect.exp()).sqrt().clamp(max=1.0)
    height = (area / log_aspect.exp()).sqrt().clamp(max=1.0)
    shift_x = (torch.rand(n, generator=generator) * 2 - 1) * (1 - width)
    shift_y = (torch.rand(n, generator=generator) * 2 - 1) * (1 - height)
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if policy.flip \
        else torch.ones(n)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = width * flip, shift_x
    theta[:, 1, 1], theta[:, 1, 2] = height, shift_y
    theta = theta.chunk(world_size)[rank]
    floats = images.float().div_(255)
    out = size or images.shape[-1]
    grid = F.affine_grid(theta.to(images.device), [len(floats), floats.shape[1], out, out], align_corners=False)
    return F.grid_sample(floats, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


MIXING = ("none", "mixup", "cutmix")


def mix(images: torch.Tensor, labels: torch.Tensor, num_classes: int, kind: str,
        generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """MixUp or CutMix on a batch of float images: (images, soft targets [N, classes]).

    Each image is blended with its partner, the image at the same place in the batch reversed,
    in a proportion lam drawn uniformly from [0, 1) once per batch (Beta(1, 1), the usual
    choice). mixup: lam * image + (1 - lam) * partner; cutmix: a rectangle of the partner,
    covering 1 - lam of the area, pasted in. The targets mix the two labels the same way.
    """
    targets = F.one_hot(labels, num_classes).float()
    if images.dtype == torch.uint8:
        images = images.float().div(255)
    if kind == "none":
        return images, targets
    lam = float(torch.rand((), generator=generator))
    partner = images.flip(0)
    if kind == "mixup":
        mixed = images * lam + partner * (1 - lam)
    else:
        h, w = images.shape[-2:]
        cut_h, cut_w = round(h * math.sqrt(1 - lam)), round(w * math.sqrt(1 - lam))
        top = int(torch.randint(0, h - cut_h + 1, (), generator=generator))
        left = int(torch.randint(0, w - cut_w + 1, (), generator=generator))
        mixed = images.clone()
        mixed[..., top:top + cut_h, left:left + cut_w] = partner[..., top:top + cut_h, left:left + cut_w]
        lam = 1 - cut_h * cut_w / (h * w)  # the share of the image actually kept
    return mixed, targets * lam + targets.flip(0) * (1 - lam)
