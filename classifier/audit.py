"""Audit a folder of labelled photos before training: what would mislead a model or flatter its val score.

    python -m classifier.audit DIR --out OUT [--checkpoint CK]

DIR is any layout train.py reads (data.find_dataset). Nothing in it is moved, renamed, changed or
deleted. Each photo is read once: its bytes hashed, its header's size kept, its pixels decoded at
the feature size (JPEG draft mode) and run once through the ImageNet-pretrained EfficientNet-Lite0
(offline weights), which gives pooled features and the ImageNet head's 1000 logits; every check
below works on those in-memory results. Writes OUT/findings.jsonl (one JSON object per finding,
each with "kind" and "path"), OUT/index.html (one offline page: thumbnails per kind) and a summary
on stdout.

Finding kinds, and how each is decided:
  unreadable   the file does not decode; "reason" is open_image's (what `classifier.data scan` says).
  duplicate    "of" another photo. "match": exact (the same bytes, SHA-256) or near (resized,
               re-encoded, slightly cropped). Two signals: the cosine similarity of the pooled
               pretrained features (shift- and crop-tolerant) and the distance in bits between
               64-bit DCT perceptual hashes of the whole photo (blind to resizing and re-encoding,
               not to cropping). A pair is near when either is decisive (similarity >=
               NEAR_SIMILARITY, or hashes <= NEAR_HASH_BITS apart) or both nearly are
               (>= JOINT_SIMILARITY and <= JOINT_HASH_BITS). On the 3,000 untouched catsdogs photos
               no pair of distinct photos comes near any of these (their highest similarity is
               0.86 and the 4.5 million pairs' hashes are 31 +- 4 bits apart, at least 12), while
               resized copies are 0-2 bits apart and copies cropped by 3-8% a side score 0.88-0.97.
               "scope": within class, across classes, across train/val. Each pair is reported once;
               "path" is the copy to leave out (the val one of a train/val pair), "of" the one to keep.
  label        the photo looks like another class. Out-of-fold predictions: a logistic-regression
               probe on pooled features is fitted on all folds but one and scores the held-out
               fold, so no photo is scored by a probe that saw it (or its label). Flagged as in
               confident learning (Northcutt et al., 2021): each class j gets a threshold t_j, the
               mean probability of j among photos labelled j; a photo's candidate classes are those
               whose probability reaches their threshold, and it is flagged when the likeliest
               candidate is not its given class. "confidence" = probability of "suggested".
               With --checkpoint, the probe reads that model's penultimate features instead (still
               out of fold, but a photo the checkpoint trained on has features shaped by its given
               label, so a mislabelled training photo can hide: the pretrained default has no such bias).
  neither      the photo shows none of the classes. Classes cat and dog: the project's rule
               (neither.NeitherRule): no ImageNet cat, dog, wolf or fox class among the ImageNet head's
               top guesses, and the folder's other photos most like it not as similar as the rule's
               similarity (cosine of pooled features: the folder plays the training photos). Other classes: none of its IMAGENET_TOP guesses is a typical
               guess for any class, one that is among the top guesses of at least TYPICAL_SHARE (and
               2) of that class's other photos: the folder itself says what its classes look like
               to ImageNet. "confidence" = the ImageNet probability of none of those classes.
  tiny         the shorter side is below --min-side pixels: too little to learn from.
  imbalance    a class with fewer than IMBALANCE_RATIO times the photos of the largest (per split).
  small_class  a class with fewer than MIN_VAL_PHOTOS validation photos: one photo moves its val
               accuracy by 10 points or more (cross-validate instead, or add photos).
  ignored      a file in a class folder that train.py passes over (an extension it does not read:
               HEIC, AVIF, RAW ...), so the photo silently does not count.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights
from tqdm import tqdm

from classifier.checkpoint import load_checkpoint, model_from_checkpoint
from classifier.data import FOLDER_KINDS, find_dataset, normalized_path, stratified_folds
from classifier.images import IMAGE_EXTENSIONS, Preprocessing, decode_stream, open_image
from classifier.neither import IMAGENET_CATS_AND_DOGS, NeitherRule, is_cats_and_dogs
from classifier.errors import ClassifierError
from classifier.models import create_model, model_entry
from classifier.runtime import autocast, fuse_batch_norms, one_thread, resolve_precision, select_device

PRETRAINED = "efficientnet_lite0"
FEATURE_SIZE = 224  # center crops: where the pretrained network's ImageNet guesses are sound
HASH_SIZE = 32  # perceptual hashes: DCT of a HASH_SIZE x HASH_SIZE grayscale, the 8x8 lowest frequencies
_FREQUENCY = torch.arange(HASH_SIZE, dtype=torch.float64)
DCT_BASIS = torch.cos(math.pi * (2 * _FREQUENCY[None, :] + 1) * _FREQUENCY[:, None] / (2 * HASH_SIZE))  # DCT-II
NEAR_SIMILARITY = 0.92
NEAR_HASH_BITS = 6
JOINT_SIMILARITY, JOINT_HASH_BITS = 0.85, 16
TYPICAL_SHARE = 0.2
IMAGENET_TOP = 5  # the ImageNet head's guesses the neither check of other classes looks at
MIN_SIDE = 32
IMBALANCE_RATIO = 1 / 3
MIN_VAL_PHOTOS = 10
FOLDS = 5
KINDS = ("unreadable", "duplicate", "label", "neither", "tiny", "imbalance", "small_class", "ignored")


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


# --------------------------------------------------------------------------- one pass over the photos


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


# --------------------------------------------------------------------------- findings


def unreadable_findings(scan: Scan) -> list[dict]:
    return [{"kind": "unreadable", "path": scan.photos[i].path, "reason": reason,
             "given": scan.classes[scan.photos[i].label]} for i, reason in sorted(scan.errors.items())]


def tiny_findings(scan: Scan, min_side: int = MIN_SIDE) -> list[dict]:
    """Photos whose shorter side (in the file, before any resizing) is below min_side pixels."""
    return [{"kind": "tiny", "path": photo.path, "given": scan.classes[photo.label], "width": size[0],
             "height": size[1], "confidence": 1 - min(size) / min_side}
            for photo, size in zip(scan.photos, scan.sizes) if size and min(size) < min_side]


def keep_order(photo: Photo) -> tuple:
    """Of two copies, the one to keep sorts first: the training copy, then the first path."""
    return photo.split != "train", photo.path


def duplicate_pairs(scan: Scan, similarity: float = NEAR_SIMILARITY, hash_bits: int = NEAR_HASH_BITS) -> list[tuple]:
    """(i, j, match, cosine similarity) for each pair of copies, i < j, once: exact when the
    bytes are the same, near when the features or the perceptual hashes are close enough."""
    pairs, exact = [], set()
    groups: dict[str, list[int]] = {}
    for index, digest in enumerate(scan.digests):
        if digest is not None:
            groups.setdefault(digest, []).append(index)
    for group in groups.values():
        group.sort(key=lambda i: keep_order(scan.photos[i]))
        pairs += [(group[0], other, "exact", 1.0) for other in group[1:]]
        exact.update((min(a, b), max(a, b)) for a in group for b in group if a != b)
    if scan.features is None:
        return pairs
    for i, j, cosine in near_pairs(scan, similarity, hash_bits):
        if (i, j) not in exact:
            pairs.append((i, j, "near", cosine))
    return pairs


def near_pairs(scan: Scan, similarity: float, hash_bits: int, block: int = 512):
    """Pairs (i < j) of readable photos that are near copies (see the module's docstring),
    compared a block of rows at a time (memory: block x N)."""
    readable = scan.readable.nonzero().flatten()
    features = nn.functional.normalize(scan.features[readable], dim=1)
    bits = scan.hashes[readable].float()
    for start in range(0, len(readable), block):
        rows = slice(start, start + block)
        cosine = features[rows] @ features.T
        distance = bits[rows] @ (1 - bits).T + (1 - bits[rows]) @ bits.T
        both = (cosine >= JOINT_SIMILARITY) & (distance <= JOINT_HASH_BITS)
        close = (cosine >= similarity) | (distance <= hash_bits) | both
        close &= torch.arange(len(readable))[None, :] > torch.arange(start, start + close.shape[0])[:, None]
        for a, b in close.nonzero().tolist():
            yield int(readable[start + a]), int(readable[b]), float(cosine[a, b])


def duplicate_findings(scan: Scan, similarity: float = NEAR_SIMILARITY, hash_bits: int = NEAR_HASH_BITS) -> list[dict]:
    """One finding per pair of copies; "path" is the copy to leave out, "of" the one to keep."""
    findings = []
    for i, j, match, cosine in duplicate_pairs(scan, similarity, hash_bits):
        keep, copy = sorted((scan.photos[i], scan.photos[j]), key=keep_order)
        scope = []
        if scan.given_split and keep.split != copy.split:
            scope.append("across train/val")
        if keep.label != copy.label:
            scope.append("across classes")
        findings.append({"kind": "duplicate", "path": copy.path, "of": keep.path, "match": match,
                         "scope": " and ".join(scope) or "within class", "given": scan.classes[copy.label],
                         "of_given": scan.classes[keep.label], "confidence": round(cosine, 4)})
    return sorted(findings, key=lambda f: -f["confidence"])


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-2):
    """A multinomial logistic regression on standardized features (L-BFGS to convergence):
    a function from features to class probabilities. A feature (nearly) constant on the
    training folds is scaled like a typical one, so it cannot blow up on the held-out fold."""
    mean, scale = features.mean(0), features.std(0)
    scale = scale.clamp_min(float(scale.mean()) * 0.01 + 1e-12)
    inputs = ((features - mean) / scale).double()
    layer = nn.Linear(features.shape[1], num_classes).double()
    optimizer = torch.optim.LBFGS(layer.parameters(), lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(layer(inputs), labels) + weight_decay / 2 * layer.weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return lambda x: layer(((x - mean) / scale).double()).softmax(1).float().detach()


def out_of_fold_probabilities(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                              folds: int = FOLDS, seed: int = 0) -> torch.Tensor:
    """Each photo's class probabilities from a probe fitted on the other folds only."""
    fold_of = stratified_folds(labels, folds, seed)
    probabilities = torch.zeros(len(labels), num_classes)
    with one_thread():
        for fold in range(folds):
            held = fold_of == fold
            if held.any():
                probabilities[held] = fit_probe(features[~held], labels[~held], num_classes)(features[held])
    return probabilities


def confident_learning(probabilities: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(flagged mask, suggested class) by confident learning's confident joint: class j's
    threshold is the mean probability of j among photos labelled j; a photo is counted under
    the likeliest class whose probability reaches its threshold, and flagged when that is not
    its given class. Per-class thresholds adapt to how sure the probe is about each class."""
    num_classes = probabilities.shape[1]
    thresholds = torch.stack([probabilities[labels == j, j].mean() if (labels == j).any() else torch.tensor(1.0)
                              for j in range(num_classes)])
    candidates = probabilities >= thresholds
    suggested = torch.where(candidates, probabilities, torch.tensor(-1.0)).argmax(1)
    return candidates.any(1) & (suggested != labels), suggested


def label_findings(scan: Scan, folds: int = FOLDS, seed: int = 0) -> list[dict]:
    """Photos whose out-of-fold prediction says they belong to another class (see the module's
    docstring); photos of classes with fewer than 2 readable photos cannot be scored."""
    if scan.probe_features is None:
        return []
    labels = torch.tensor([p.label for p in scan.photos])
    counts = torch.bincount(labels[scan.readable], minlength=len(scan.classes))
    scored = scan.readable & (counts[labels] >= 2)
    if len(labels[scored].unique()) < 2:
        return []
    index = scored.nonzero().flatten()
    probabilities = out_of_fold_probabilities(scan.probe_features[index], labels[index], len(scan.classes), folds, seed)
    flagged, suggested = confident_learning(probabilities, labels[index])
    findings = []
    for row in flagged.nonzero().flatten().tolist():
        photo, guess = scan.photos[index[row]], int(suggested[row])
        findings.append({"kind": "label", "path": photo.path, "given": scan.classes[photo.label],
                         "suggested": scan.classes[guess], "confidence": round(float(probabilities[row, guess]), 4),
                         "given_probability": round(float(probabilities[row, photo.label]), 4)})
    return sorted(findings, key=lambda f: -f["confidence"])


def typical_guesses(hits: torch.Tensor, labels: torch.Tensor, readable: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[N, 1000] bool: the ImageNet classes counted as "one of the folder's classes" for each photo:
    those among the top guesses of at least TYPICAL_SHARE (and 2) of some class's photos, the
    photo itself left out, so a photo never vouches for its own guesses."""
    counts = torch.stack([hits[readable & (labels == c)].sum(0) for c in range(num_classes)]).float()
    sizes = counts.new_tensor([int((readable & (labels == c)).sum()) for c in range(num_classes)])
    typical = counts >= (TYPICAL_SHARE * sizes).clamp(min=2)[:, None]
    known = torch.zeros_like(hits)
    for c in range(num_classes):
        members = readable & (labels == c)
        others = typical[torch.arange(num_classes) != c].any(0)
        own = counts[c] - hits[members].float() >= max(2.0, TYPICAL_SHARE * (float(sizes[c]) - 1))
        known[members] = others | own
    return known


def neither_findings(scan: Scan, guesses: int = 3) -> list[dict]:
    """Photos that look like none of the classes (see the module's docstring); "imagenet" lists
    the ImageNet head's likeliest guesses, to say what the photo looks like instead."""
    if scan.imagenet is None:
        return []
    readable, labels = scan.readable, torch.tensor([p.label for p in scan.photos])
    top = scan.imagenet.topk(IMAGENET_TOP, dim=1).indices
    hits = torch.zeros_like(scan.imagenet, dtype=torch.bool).scatter_(1, top, True)
    if is_cats_and_dogs(scan.classes):
        known = torch.zeros_like(hits)
        known[:, IMAGENET_CATS_AND_DOGS] = True
        rule = NeitherRule.for_cats_and_dogs(scan.features)  # the folder plays the training photos
        neither = rule.is_neither(rule.known_scores(None, scan.imagenet, nearest_other(scan, rule.neighbours)))
    else:
        known = typical_guesses(hits, labels, readable, len(scan.classes))
        neither = ~(hits & known).any(1)
    confidence = 1 - (scan.imagenet.softmax(1) * known).sum(1)
    names = MobileNet_V3_Large_Weights.IMAGENET1K_V1.meta["categories"]
    findings = [{"kind": "neither", "path": scan.photos[i].path, "given": scan.classes[labels[i]],
                 "confidence": round(float(confidence[i]), 4),
                 "imagenet": [names[k] for k in top[i, :guesses].tolist()]}
                for i in (neither & readable).nonzero().flatten().tolist()]
    return sorted(findings, key=lambda f: -f["confidence"])


def nearest_other(scan: Scan, neighbours: int = 1, block: int = 512) -> torch.Tensor:
    """Each photo's mean cosine similarity to its `neighbours` most similar other readable photos of
    the folder: the neither rule's "like a training photo" test, with the folder as the training photos."""
    features = nn.functional.normalize(scan.features, dim=1)
    others = features[scan.readable]
    nearest = torch.empty(len(features))
    for start in range(0, len(features), block):
        cosine = features[start:start + block] @ others.T
        cosine[cosine > 0.9999] = -1  # the photo itself (and exact copies, reported as duplicates)
        nearest[start:start + block] = cosine.topk(min(neighbours, cosine.shape[1]), dim=1).values.mean(1)
    return nearest


def class_folder(paths: list[str]) -> str:
    """The folder a class's photos share (the root itself in the flat layout)."""
    return os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])


def class_counts(scan: Scan, split: str | None) -> list[tuple[str, int, int]]:
    """(folder, readable photos, all photos) of each class, in one split or (None) in all."""
    readable, members = scan.readable.tolist(), {label: [] for label in range(len(scan.classes))}
    for index, photo in enumerate(scan.photos):
        if split in (None, photo.split):
            members[photo.label].append(index)
    return [(class_folder([scan.photos[i].path for i in indices]) if indices else "",
             sum(readable[i] for i in indices), len(indices)) for indices in members.values()]


def imbalance_findings(scan: Scan, ratio: float = IMBALANCE_RATIO) -> list[dict]:
    """Classes with fewer than `ratio` times the readable photos of the largest class; per
    split when the folder has its own (train/ teaches, val/ measures), else over all photos."""
    findings = []
    for split in (("train", "val") if scan.given_split else (None,)):
        counts = class_counts(scan, split)
        largest = max(readable for _, readable, _ in counts)
        for label, (folder, readable, _) in enumerate(counts):
            if largest and readable < ratio * largest:
                findings.append({"kind": "imbalance", "path": folder, "given": scan.classes[label],
                                 "split": split or "all", "count": readable, "largest": largest,
                                 "ratio": round(readable / largest, 3), "confidence": round(1 - readable / largest, 3)})
    return findings


def small_class_findings(scan: Scan, min_val: int = MIN_VAL_PHOTOS) -> list[dict]:
    """Classes with fewer than min_val readable validation photos (the folder's val/, or the
    share train.py would hold out with the same --val-fraction and --seed)."""
    findings = []
    for label, (folder, readable, _) in enumerate(class_counts(scan, "val")):
        if readable < min_val:
            folder = folder or class_counts(scan, None)[label][0]  # a class too small to hold any out
            findings.append({"kind": "small_class", "path": folder, "given": scan.classes[label],
                             "val_photos": readable, "confidence": round(1 - readable / min_val, 3)})
    return findings


def ignored_findings(scan: Scan) -> list[dict]:
    """Files beside the photos (in the same folders) that train.py does not read."""
    listed, findings = {p.path for p in scan.photos}, []
    for folder in sorted({os.path.dirname(p.path) for p in scan.photos}):
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            path = normalized_path(entry.path)
            if entry.name.startswith(".") or not entry.is_file() or path in listed:
                continue
            extension = os.path.splitext(entry.name)[1].lower() or "(none)"
            reason = (f"train.py does not read {extension} files" if not entry.name.lower().endswith(IMAGE_EXTENSIONS)
                      else "its name does not start with a class name and a dot")
            findings.append({"kind": "ignored", "path": path, "reason": reason, "confidence": 1.0})
    return findings


# --------------------------------------------------------------------------- running an audit


@dataclass
class AuditSettings:
    image_size: int = FEATURE_SIZE
    folds: int = FOLDS
    min_side: int = MIN_SIDE
    near_similarity: float = NEAR_SIMILARITY
    near_hash_bits: int = NEAR_HASH_BITS
    val_fraction: float = 0.2
    seed: int = 0
    checkpoint: str = ""
    device: str = "auto"
    precision: str = "auto"
    batch_size: int = 32
    workers: int = 0


def audit(root: str | Path, settings: AuditSettings = AuditSettings()) -> tuple[Scan, list[dict]]:
    """Scan every photo under root once, then run each check: (the scan, all findings)."""
    photos, classes, given_split = list_photos(root, settings.val_fraction, settings.seed)
    device = select_device(settings.device)
    networks = [pretrained_network(settings.image_size)]
    if settings.checkpoint:
        networks.append(checkpoint_network(settings.checkpoint))
    scan = scan_photos(Scan(photos, classes, given_split), networks, device,
                       resolve_precision(settings.precision, device), settings.batch_size, settings.workers or None)
    findings = (unreadable_findings(scan) + duplicate_findings(scan, settings.near_similarity, settings.near_hash_bits)
                + label_findings(scan, settings.folds, settings.seed) + neither_findings(scan)
                + tiny_findings(scan, settings.min_side) + imbalance_findings(scan) + small_class_findings(scan)
                + ignored_findings(scan))
    return scan, findings


def write_findings(findings: list[dict], path: Path) -> None:
    path.write_text("".join(json.dumps(f) + "\n" for f in findings))


# --------------------------------------------------------------------------- the page and the summary

KIND_HELP = {
    "unreadable": "files that do not decode as images: train.py skips them",
    "duplicate": "the same photo twice (exact copies, or resized, re-encoded or slightly cropped); "
                 "a copy across train/val makes val accuracy flatter the model",
    "label": "photos that look like another class to a probe that never saw them: mislabelled, or hard",
    "neither": "photos that look like none of the classes",
    "tiny": "too few pixels to learn from",
    "imbalance": "classes with far fewer photos than the largest",
    "small_class": "classes with too few validation photos to measure them",
    "ignored": "files beside the photos that train.py does not read",
}
THUMBNAIL = 128
CARDS_PER_KIND = 300
STYLE = """body{font:14px sans-serif;margin:1.5em;color:#222}h2{margin:1.2em 0 .2em}
.grid{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}.card{width:%dpx;border:1px solid #ccc;
border-radius:6px;padding:6px;background:#fafafa}.card.wide{width:%dpx}.card img{display:block;margin:auto}
.pair{display:flex;gap:4px;justify-content:center}.path{font-family:monospace;font-size:11px;word-break:break-all;
color:#555}.note{color:#666;margin-top:0}.bad{color:#b00}""" % (THUMBNAIL + 12, 2 * THUMBNAIL + 16)


def thumbnail(path: str) -> str:
    """A small JPEG of the photo as a data: URI (the page works offline), or "" if it does not decode."""
    try:
        image = open_image(path, size_hint=THUMBNAIL)
    except ClassifierError:
        return ""
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def picture(path: str) -> str:
    uri = thumbnail(path) if os.path.isfile(path) else ""
    return f'<img src="{uri}" alt="">' if uri else '<div class="bad">(no image)</div>'


def card_text(finding: dict) -> str:
    """The line under a card's thumbnails: what was found, in a few words."""
    kind, given = finding["kind"], finding.get("given", "")
    if kind == "label":
        return f"given <b>{given}</b>, looks like <b>{finding['suggested']}</b> ({finding['confidence']:.0%})"
    if kind == "duplicate":
        return (f"{finding['match']} copy, {finding['scope']} ({given} / {finding['of_given']}; "
                f"similarity {finding['confidence']:.3f})")
    if kind == "neither":
        return (f"given <b>{given}</b>; ImageNet sees: {', '.join(finding['imagenet'])} "
                f"({finding['confidence']:.0%} none of the classes)")
    if kind == "tiny":
        return f"{finding['width']}x{finding['height']} px, given {given}"
    if kind == "imbalance":
        return (f"<b>{given}</b> ({finding['split']}): {finding['count']} photos, "
                f"{finding['ratio']:.0%} of the largest class's {finding['largest']}")
    if kind == "small_class":
        return f"{finding['val_photos']} validation photos of <b>{given}</b>"
    return finding.get("reason", "")


def card(finding: dict, root: str) -> str:
    def shown(path):
        return html.escape(os.path.relpath(path, root) if path.startswith(root) else path)

    pictures = ""
    if finding["kind"] not in FOLDER_KINDS:
        pictures = picture(finding["path"]) if "of" not in finding else \
            f'<div class="pair">{picture(finding["path"])}{picture(finding["of"])}</div>'
    text = card_text({k: html.escape(v) if isinstance(v, str) else v for k, v in finding.items()})
    other = f'<div class="path">of {shown(finding["of"])}</div>' if "of" in finding else ""
    return (f'<div class="card{" wide" if "of" in finding else ""}">{pictures}'
            f'<div class="path">{shown(finding["path"])}</div>{other}<div>{text}</div></div>')


def write_page(findings: list[dict], scan: Scan, root: str, path: Path) -> None:
    """OUT/index.html: per kind, a grid of cards sorted by confidence, thumbnails inline."""
    root = normalized_path(root)
    sections = []
    for kind in KINDS:
        found = sorted((f for f in findings if f["kind"] == kind), key=lambda f: -f.get("confidence", 1.0))
        cards = "".join(card(f, root) for f in found[:CARDS_PER_KIND])
        hidden = len(found) - CARDS_PER_KIND
        more = f'<p class="note">and {hidden} more in findings.jsonl</p>' if hidden > 0 else ""
        sections.append(f'<h2 id="{kind}">{kind} ({len(found)})</h2><p class="note">{KIND_HELP[kind]}</p>'
                        f'<div class="grid">{cards}</div>{more}')
    title = html.escape(f"Audit of {root}")
    counts = ", ".join(f'<a href="#{k}">{k} {sum(f["kind"] == k for f in findings)}</a>' for k in KINDS)
    path.write_text(f'<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>{STYLE}</style>'
                    f'</head><body><h1>{title}</h1><p>{len(scan.photos)} photos, classes '
                    f'{html.escape(", ".join(scan.classes))}. {counts}</p>{"".join(sections)}</body></html>')


def summary(findings: list[dict], scan: Scan, root: str, out: Path, seconds: float, examples: int = 2) -> str:
    """What the audit found, on one screen: counts per kind and the most confident examples."""
    root = normalized_path(root)

    def shown(path):
        return os.path.relpath(path, root) if path.startswith(root) else path

    lines = [f"audited {len(scan.photos):,} photos in {root} (classes {', '.join(scan.classes)}) in {seconds:.0f} s"]
    for kind in KINDS:
        found = sorted((f for f in findings if f["kind"] == kind), key=lambda f: -f.get("confidence", 1.0))
        lines.append(f"  {kind:<12} {len(found):>5}")
        for finding in found[:examples]:
            text = card_text(finding).replace("<b>", "").replace("</b>", "")
            other = f" = {shown(finding['of'])}" if "of" in finding else ""
            lines.append(f"      {shown(finding['path'])}{other}: {text}")
    lines += [f"wrote {out / 'findings.jsonl'} ({len(findings)} findings) and {out / 'index.html'}",
              f"look at {out / 'index.html'}, delete the lines of findings.jsonl you disagree with, then leave the",
              f"rest out of training: python train.py --data {root} --exclude {out / 'findings.jsonl'}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    defaults = AuditSettings()
    parser = argparse.ArgumentParser(
        prog="python -m classifier.audit", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Audit a folder of labelled photos before training: unreadable files, duplicates "
                    "(also across train/val), photos that look like another class or like none, tiny "
                    "images, class imbalance. Never changes a file in DIR.",
        epilog="Finding kinds:\n" + "\n".join(f"  {k:<12} {v}" for k, v in KIND_HELP.items()))
    parser.add_argument("data", metavar="DIR", help="photos in any layout train.py reads")
    parser.add_argument("--out", default="audit",
                        help="folder for findings.jsonl and index.html (default: %(default)s)")
    parser.add_argument("--checkpoint", default="", metavar="CK",
                        help="score labels with this trained model's penultimate features (still out of fold) "
                             "instead of the pretrained network's (default: the pretrained EfficientNet-Lite0)")
    options = [
        ("--image-size", "image_size", int, "size of the center crops the pretrained network sees"),
        ("--folds", "folds", int, "cross-validation folds of the label probe"),
        ("--min-side", "min_side", int, "photos with a shorter side below this many pixels are tiny"),
        ("--near-similarity", "near_similarity", float,
         "cosine similarity of pretrained features from which two photos are near copies"),
        ("--near-hash-bits", "near_hash_bits", int,
         "perceptual hashes at most this many bits apart (of 64) are near copies"),
        ("--val-fraction", "val_fraction", float,
         "without train/ and val/ folders: the share train.py holds out for val"),
        ("--seed", "seed", int, "the seed of that split and of the probe's folds, as train.py's --seed"),
        ("--device", "device", str, "auto, cpu, cuda or mps"),
        ("--precision", "precision", str, "auto (bf16 where the device computes it natively), fp32, bf16 or fp16"),
        ("--batch-size", "batch_size", int, "photos per forward pass"),
        ("--workers", "workers", int, "decoding threads, 0 for one per core"),
    ]
    for flag, name, kind, text in options:
        parser.add_argument(flag, dest=name, type=kind, default=getattr(defaults, name),
                            help=text + " (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Exit status 0 when the audit ran (findings are not errors), 1 with one line on a bad input."""
    args = vars(build_parser().parse_args(argv))
    root, out = args.pop("data"), Path(args.pop("out"))
    try:
        started = time.perf_counter()
        scan, findings = audit(root, AuditSettings(**args))
        try:
            out.mkdir(parents=True, exist_ok=True)
            write_findings(findings, out / "findings.jsonl")
            write_page(findings, scan, root, out / "index.html")
        except OSError as error:
            raise ClassifierError(f"{out}: cannot write the audit ({error.strerror or error})") from None
    except ClassifierError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary(findings, scan, root, out, time.perf_counter() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
