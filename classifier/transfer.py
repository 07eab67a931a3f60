"""Transfer learning on cached activations: run a backbone's frozen stages once, train the rest.

With `--finetune probe` or `--finetune last` the early stages of a pretrained backbone never
change, so their output for a given input never changes either. `cached_features` runs them
once per image (and per augmented view: several random crops and flips of each training
photo, drawn once), keeps the results in memory as float16, and training then runs only the
model's `tail` on them: an epoch takes seconds instead of minutes.
Validation keeps each image's views together ([N, V, ...]), so `tail_logits` can average
them: with --tta, the image and its mirror image at each test-time size, exactly as
`predict --tta` does.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from classifier.data import Augmentation, DecodedImages, augment
from classifier.runtime import autocast, fuse_batch_norms

FEATURE_DTYPE = torch.float16  # halves the memory; the tail computes in float32


def caches_features(model: nn.Module) -> bool:
    """Whether the model has frozen leading stages whose outputs training can cache."""
    return getattr(model, "frozen_stages", 0) > 0


@torch.inference_mode()
def cached_features(model: nn.Module, decoded: DecodedImages, preprocessing, device: torch.device,
                    views: int = 1, flip: bool = False, policy: Augmentation | None = None,
                    seed: int = 0, batch_size: int = 64, precision: str = "fp32",
                    desc: str = "features") -> DecodedImages:
    """The frozen stages' outputs for every image, as a DecodedImages of [N, V, C, H, W].

    View 0 is the image itself; with `flip` view 1 is its mirror image; further views (up to
    `views`) are random crops and flips drawn from `policy`, seeded by (seed, view).
    The frozen stages run in `precision` (bf16: 2-3x faster on CPUs with AVX512-BF16), with
    batch norms folded into the convolutions (runtime.fuse_batch_norms) and weights and inputs
    in NHWC memory order, which runs depthwise convolutions faster on CPUs.
    """
    fmt = torch.channels_last
    frozen = fuse_batch_norms(model).to(memory_format=fmt)  # the frozen stages are in eval mode anyway
    images, chunks = decoded.images, []
    progress = tqdm(range(0, len(images), batch_size), desc=desc, leave=False, disable=None)
    for start in progress:
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
        chunks.append(torch.stack(outputs, 1).to("cpu", FEATURE_DTYPE).contiguous())
    features = torch.cat(chunks) if chunks else torch.empty(0)
    return DecodedImages(features, decoded.labels, decoded.paths, decoded.skipped)


def flatten_views(features: DecodedImages) -> DecodedImages:
    """[N, V, ...] -> [N * V, ...], each view a training example with its image's label."""
    views = features.images.shape[1]
    return DecodedImages(features.images.flatten(0, 1), features.labels.repeat_interleave(views),
                         [p for p in features.paths for _ in range(views)], features.skipped)


def tail_logits(model: nn.Module):
    """A function: cached features [B, V, ...], or a list of them (one per test-time size)
    -> logits [B, classes], averaged over the views and sizes."""

    def logits(features: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        per_size = []
        for views in (features if isinstance(features, (list, tuple)) else [features]):
            b, v = views.shape[:2]
            per_size.append(model.tail(views.flatten(0, 1).float()).float().view(b, v, -1).mean(1))
        return sum(per_size) / len(per_size)

    return logits
