"""One pass over a folder's photos, for the audit's checks (checks.py) to work on in memory.

Each photo is read once: its bytes hashed (SHA-256), its header's size kept, a 64-bit DCT
perceptual hash of the whole photo taken, its pixels decoded at the feature size (JPEG draft
mode) and run once through the ImageNet-pretrained EfficientNet-Lite0 (offline weights), which
gives pooled features and the ImageNet head's 1000 logits; with a checkpoint, also through that
model, for its penultimate features. Memory holds one batch of pixels and every photo's outputs.
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from classifier.checkpoint import load_checkpoint, model_from_checkpoint
from classifier.data import find_dataset, normalized_path
from classifier.errors import ClassifierError
from classifier.images import Preprocessing, decode_stream, open_image
from classifier.models import create_model, model_entry
from classifier.runtime import autocast, fuse_batch_norms

PRETRAINED = "efficientnet_lite0"
FEATURE_SIZE = 224  # center crops: where the pretrained network's ImageNet guesses are sound
HASH_SIZE = 32  # perceptual hashes: DCT of a HASH_SIZE x HASH_SIZE grayscale, the 8x8 lowest frequencies
_FREQUENCY = torch.arange(HASH_SIZE, dtype=torch.float64)
DCT_BASIS = torch.cos(math.pi * (2 * _FREQUENCY[None, :] + 1) * _FREQUENCY[:, None] / (2 * HASH_SIZE))  # DCT-II


@dataclass
class Photo:
    path: str  # absolute (normalized_path), so --exclude matches from any working directory
    label: int
    split: str  # "train" or "val": the folder's own split, or the one train.py would draw


@dataclass
class Scan:
    """What one pass over the photos learned; rows of every tensor follow `photos`."""

    photos: list[Photo]
    classes: list[str]
    given_split: bool  # whether train/ and val/ are the folder's own
    errors: dict[int, str] = field(default_factory=dict)  # unreadable photos: index -> reason
    digests: list[str | None] = field(default_factory=list)
    sizes: list[tuple[int, int] | None] = field(default_factory=list)
    hashes: torch.Tensor | None = None  # [N, 64] bool perceptual hashes
    features: torch.Tensor | None = None  # [N, D] pooled pretrained features
    imagenet: torch.Tensor | None = None  # [N, 1000] ImageNet logits
    probe_features: torch.Tensor | None = None  # [N, D'] what the label probe reads

    @property
    def readable(self) -> torch.Tensor:
        mask = torch.ones(len(self.photos), dtype=torch.bool)
        mask[list(self.errors)] = False
        return mask


def list_photos(root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[Photo], list[str], bool]:
    """Every photo train.py would read from root, with its class and split; (photos, classes,
    whether the split is the folder's own)."""
    dataset = find_dataset(root, val_fraction, seed)
    photos = [Photo(normalized_path(p), label, split)
              for split, images in (("train", dataset.train), ("val", dataset.val))
              for p, label in zip(images.paths, images.labels)]
    return photos, dataset.classes, dataset.layout == "train/val"


@dataclass
class Network:
    """A model, the decoding it takes, and what to keep from its forward pass."""

    model: nn.Module
    preprocessing: Preprocessing
    outputs: Callable[[nn.Module, torch.Tensor], tuple]  # (model, normalized images) -> [B, ...] tensors


def pretrained_network(image_size: int = FEATURE_SIZE) -> Network:
    """EfficientNet-Lite0 with ImageNet weights: pooled features and ImageNet logits."""
    model = create_model(PRETRAINED, num_classes=2, pretrained=True, finetune="probe")
    preprocessing = Preprocessing(image_size, **model_entry(PRETRAINED).preprocessing)

    def outputs(network, x):
        frozen = network.frozen_features(x)
        return network.pool(frozen), network.imagenet_logits(frozen)

    return Network(model, preprocessing, outputs)


def checkpoint_network(path: str | Path) -> Network:
    """A trained model's penultimate features: the input of its output layer (get_classifier)."""
    checkpoint = load_checkpoint(path)
    model = model_from_checkpoint(checkpoint, path)
    preprocessing = Preprocessing(**{**checkpoint["preprocessing"], "tta_sizes": ()})

    def outputs(network, x):
        captured = []
        hook = network.get_classifier().register_forward_hook(lambda _, inputs, __: captured.append(inputs[0]))
        try:
            network(x)
        finally:
            hook.remove()
        return (captured[0].flatten(1),)

    return Network(model, preprocessing, outputs)


def read_photo(path: str, preprocessings: list[Preprocessing]) -> tuple:
    """(SHA-256 of the bytes, header size, perceptual hash, pixels for each preprocessing): the
    file is decoded once, at the largest size any preprocessing needs; ClassifierError if it cannot be."""
    image = open_image(path, size_hint=max(p.image_size for p in preprocessings))
    try:
        with open(path, "rb") as file:
            digest = hashlib.sha256(file.read()).hexdigest()
        with Image.open(path) as header:  # draft mode shrank `image`: the file's own size is in its header
            size = header.size
    except OSError as error:
        raise ClassifierError(f"{path}: cannot read image ({error.strerror or error})") from None
    gray = np.asarray(image.convert("L").resize((HASH_SIZE, HASH_SIZE), Image.Resampling.BILINEAR), dtype=np.float64)
    return digest, size, perceptual_hashes(torch.from_numpy(gray)[None])[0], [p.decode(image) for p in preprocessings]


def forward(networks: list[Network], pixels: list[list[torch.Tensor]], device, precision) -> list[torch.Tensor]:
    """Every network's outputs for one batch (pixels[photo][network]), float32 on the CPU."""
    outputs = []
    for k, network in enumerate(networks):
        x = network.preprocessing.normalize(torch.stack([p[k] for p in pixels]).to(device))
        with torch.inference_mode(), autocast(device, precision):
            outputs += network.outputs(network.model, x.contiguous(memory_format=torch.channels_last))
    return [o.float().cpu() for o in outputs]


def unreadable_reason(error: str, path: str) -> str:
    """open_image's message without the path it starts with: "empty file", "broken symbolic link" ..."""
    reason = error.removeprefix(f"{path}: ")
    if reason.startswith("cannot read image ("):
        return reason.removeprefix("cannot read image (").removesuffix(")")
    return reason


def readable_batches(stream, scan: Scan, batch_size: int):
    """Batches of (index, pixels) of the photos that decode; records what each read found."""
    batch = []
    for index, result, error in stream:
        if result is None:
            scan.errors[index] = unreadable_reason(error, scan.photos[index].path)
            continue
        scan.digests[index], scan.sizes[index], scan.hashes[index], pixels = result
        batch.append((index, pixels))
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def scan_photos(scan: Scan, networks: list[Network], device: torch.device, precision: str,
                batch_size: int = 32, workers: int | None = None) -> Scan:
    """Read every photo once and run it through each network, a batch at a time, so memory
    holds one batch of pixels and every photo's outputs (a few KB), however large the folder."""
    networks = [Network(fuse_batch_norms(n.model).to(device, memory_format=torch.channels_last),
                        n.preprocessing, n.outputs) for n in networks]
    preprocessings = [n.preprocessing for n in networks]
    count = len(scan.photos)
    scan.digests, scan.sizes = [None] * count, [None] * count
    scan.hashes = torch.zeros(count, 64, dtype=torch.bool)
    stream = tqdm(decode_stream(range(count), lambda i: read_photo(scan.photos[i].path, preprocessings), workers),
                  total=count, desc="audit", unit="photo", leave=False, disable=None, file=sys.stderr)
    rows, outputs = [], []
    for batch in readable_batches(stream, scan, batch_size):
        rows += [index for index, _ in batch]
        outputs.append(forward(networks, [pixels for _, pixels in batch], device, precision))
    columns = []
    for parts in zip(*outputs):
        column = torch.zeros(count, *parts[0].shape[1:])
        column[rows] = torch.cat(parts)
        columns.append(column)
    if columns:
        scan.features, scan.imagenet = columns[0], columns[1]
        scan.probe_features = columns[2] if len(columns) > 2 else columns[0]
    return scan


def perceptual_hashes(grays: torch.Tensor) -> torch.Tensor:
    """DCT perceptual hashes (pHash) of grayscale images [N, HASH_SIZE, HASH_SIZE] -> [N, 64] bool:
    the 8x8 lowest frequencies, one bit each for above or below their median. Resizing and
    re-encoding barely change them."""
    low = (DCT_BASIS @ grays.double() @ DCT_BASIS.T)[:, :8, :8].flatten(1)
    return low > low[:, 1:].median(1, keepdim=True).values  # the median leaves out the mean (DC) term

