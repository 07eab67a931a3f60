"""What an audit looks for: CHECKS, the one list of every check, each working on a Scan (scan.py).

A check has its kind (the "kind" of its findings in findings.jsonl), a sentence for people (the
page's note under the kind's heading, and `--help`), its run ((scan, settings) -> findings: dicts
with "kind", "path", and "confidence" where some are surer than others) and its card (what was
found, in a few words of HTML: the line under a finding's thumbnails, and in the summary). How
each check decides is in its run's docstring.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights

from classifier.data import normalized_path, stratified_folds
from classifier.images import IMAGE_EXTENSIONS
from classifier.neither import IMAGENET_CATS_AND_DOGS, NeitherRule, is_cats_and_dogs
from classifier.probe import fit_probe
from classifier.runtime import one_thread
from classifier.scan import Photo, Scan

NEAR_SIMILARITY = 0.92
NEAR_HASH_BITS = 6
JOINT_SIMILARITY, JOINT_HASH_BITS = 0.85, 16
TYPICAL_SHARE = 0.2
IMAGENET_TOP = 5  # the ImageNet head's guesses the neither check of other classes looks at
MIN_SIDE = 32
IMBALANCE_RATIO = 1 / 3
MIN_VAL_PHOTOS = 10
FOLDS = 5


@dataclass
class CheckSettings:
    """The thresholds of the checks that take one from the command line."""

    folds: int = FOLDS  # label: cross-validation folds of the probe
    min_side: int = MIN_SIDE  # tiny: pixels of the shorter side
    near_similarity: float = NEAR_SIMILARITY  # duplicate: cosine similarity of pretrained features
    near_hash_bits: int = NEAR_HASH_BITS  # duplicate: bits (of 64) between perceptual hashes
    seed: int = 0  # label: the seed of the probe's folds


@dataclass(frozen=True)
class Check:
    kind: str
    help: str  # for people: what findings of this kind are, and why they matter
    run: Callable[[Scan, CheckSettings], list[dict]]
    card: Callable[[dict], str]  # a finding (its text values escaped) -> a few words of HTML


# --------------------------------------------------------------------------- unreadable, tiny, ignored


def unreadable_findings(scan: Scan, settings: CheckSettings) -> list[dict]:
    """Files that do not decode; "reason" is open_image's (what `classifier.data scan` says)."""
    return [{"kind": "unreadable", "path": scan.photos[i].path, "reason": reason,
             "given": scan.classes[scan.photos[i].label]} for i, reason in sorted(scan.errors.items())]


def tiny_findings(scan: Scan, settings: CheckSettings) -> list[dict]:
    """Photos whose shorter side (in the file, before any resizing) is below min_side pixels."""
    min_side = settings.min_side
    return [{"kind": "tiny", "path": photo.path, "given": scan.classes[photo.label], "width": size[0],
             "height": size[1], "confidence": 1 - min(size) / min_side}
            for photo, size in zip(scan.photos, scan.sizes) if size and min(size) < min_side]


def ignored_findings(scan: Scan, settings: CheckSettings) -> list[dict]:
    """Files beside the photos (in the same folders) that train.py does not read: an extension
    it does not read (HEIC, AVIF, RAW ...), so the photo silently does not count."""
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


def reason_card(finding: dict) -> str:
    return finding.get("reason", "")


def tiny_card(finding: dict) -> str:
    return f"{finding['width']}x{finding['height']} px, given {finding['given']}"


# --------------------------------------------------------------------------- duplicate


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
    """Pairs (i < j) of readable photos that are near copies (resized, re-encoded, slightly
    cropped), compared a block of rows at a time (memory: block x N). Two signals: the cosine
    similarity of the pooled pretrained features (shift- and crop-tolerant) and the distance in
    bits between the perceptual hashes (blind to resizing and re-encoding, not to cropping). A
    pair is near when either is decisive (similarity >= `similarity`, or hashes <= `hash_bits`
    apart) or both nearly are (>= JOINT_SIMILARITY and <= JOINT_HASH_BITS). On the 3,000
    untouched catsdogs photos no pair of distinct photos comes near any of these (their highest
    similarity is 0.86 and the 4.5 million pairs' hashes are 31 +- 4 bits apart, at least 12),
    while resized copies are 0-2 bits apart and copies cropped by 3-8% a side score 0.88-0.97."""
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


def duplicate_findings(scan: Scan, settings: CheckSettings) -> list[dict]:
    """One finding per pair of copies, "of" another photo: "match" exact (the same bytes, SHA-256)
    or near (see near_pairs); "scope" within class, across classes, across train/val. "path" is
    the copy to leave out (the val one of a train/val pair), "of" the one to keep."""
    findings = []
    for i, j, match, cosine in duplicate_pairs(scan, settings.near_similarity, settings.near_hash_bits):
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


def duplicate_card(finding: dict) -> str:
    return (f"{finding['match']} copy, {finding['scope']} ({finding['given']} / {finding['of_given']}; "
            f"similarity {finding['confidence']:.3f})")


# --------------------------------------------------------------------------- label


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
    """(flagged mask, suggested class) by confident learning's confident joint (Northcutt et al.,
    2021): class j's threshold is the mean probability of j among photos labelled j; a photo is
    counted under the likeliest class whose probability reaches its threshold, and flagged when
    that is not its given class. Per-class thresholds adapt to how sure the probe is about each class."""
    num_classes = probabilities.shape[1]
    thresholds = torch.stack([probabilities[labels == j, j].mean() if (labels == j).any() else torch.tensor(1.0)
                              for j in range(num_classes)])
    candidates = probabilities >= thresholds
    suggested = torch.where(candidates, probabilities, torch.tensor(-1.0)).argmax(1)
    return candidates.any(1) & (suggested != labels), suggested


def label_findings(scan: Scan, settings: CheckSettings) -> list[dict]:
    """Photos that look like another class. Out-of-fold predictions: a logistic-regression probe
    on the scan's probe features is fitted on all folds but one and scores the held-out fold, so
    no photo is scored by a probe that saw it (or its label); flagged by confident_learning.
    "confidence" = probability of "suggested". Photos of classes with fewer than 2 readable
    photos cannot be scored. With a checkpoint's features (scan.py), a photo the checkpoint
    trained on has features shaped by its given label, so a mislabelled training photo can hide:
    the pretrained default has no such bias."""
    if scan.probe_features is None:
        return []
    labels = torch.tensor([p.label for p in scan.photos])
    counts = torch.bincount(labels[scan.readable], minlength=len(scan.classes))
    scored = scan.readable & (counts[labels] >= 2)
    if len(labels[scored].unique()) < 2:
        return []
    index = scored.nonzero().flatten()
    probabilities = out_of_fold_probabilities(scan.probe_features[index], labels[index], len(scan.classes),
                                              settings.folds, settings.seed)
    flagged, suggested = confident_learning(probabilities, labels[index])
    findings = []
    for row in flagged.nonzero().flatten().tolist():
        photo, guess = scan.photos[index[row]], int(suggested[row])
        findings.append({"kind": "label", "path": photo.path, "given": scan.classes[photo.label],
                         "suggested": scan.classes[guess], "confidence": round(float(probabilities[row, guess]), 4),
                         "given_probability": round(float(probabilities[row, photo.label]), 4)})
    return sorted(findings, key=lambda f: -f["confidence"])


def label_card(finding: dict) -> str:
    return f"given <b>{finding['given']}</b>, looks like <b>{finding['suggested']}</b> ({finding['confidence']:.0%})"


# --------------------------------------------------------------------------- neither


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


def neither_findings(scan: Scan, settings: CheckSettings, guesses: int = 3) -> list[dict]:
    """Photos that show none of the classes. Classes cat and dog: the project's rule
    (neither.NeitherRule): no ImageNet cat, dog, wolf or fox class among the ImageNet head's top
    guesses, and the folder's other photos most like it not as similar as the rule's similarity
    (cosine of pooled features: the folder plays the training photos). Other classes: none of its IMAGENET_TOP guesses is a
    typical guess for any class (typical_guesses): the folder itself says what its classes look
    like to ImageNet. "confidence" = the ImageNet probability of none of those classes;
    "imagenet" lists the head's likeliest guesses, to say what the photo looks like instead."""
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


def neither_card(finding: dict) -> str:
    return (f"given <b>{finding['given']}</b>; ImageNet sees: {', '.join(finding['imagenet'])} "
            f"({finding['confidence']:.0%} none of the classes)")


# --------------------------------------------------------------------------- imbalance, small_class


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


def imbalance_findings(scan: Scan, settings: CheckSettings) -> list[dict]:
    """Classes with fewer than IMBALANCE_RATIO times the readable photos of the largest class;
    per split when the folder has its own (train/ teaches, val/ measures), else over all photos."""
    findings = []
    for split in (("train", "val") if scan.given_split else (None,)):
        counts = class_counts(scan, split)
        largest = max(readable for _, readable, _ in counts)
        for label, (folder, readable, _) in enumerate(counts):
            if largest and readable < IMBALANCE_RATIO * largest:
                findings.append({"kind": "imbalance", "path": folder, "given": scan.classes[label],
                                 "split": split or "all", "count": readable, "largest": largest,
                                 "ratio": round(readable / largest, 3), "confidence": round(1 - readable / largest, 3)})
    return findings


def small_class_findings(scan: Scan, settings: CheckSettings) -> list[dict]:
    """Classes with fewer than MIN_VAL_PHOTOS readable validation photos (the folder's val/, or
    the share train.py would hold out with the same --val-fraction and --seed): one photo moves
    their val accuracy by 10 points or more."""
    findings = []
    for label, (folder, readable, _) in enumerate(class_counts(scan, "val")):
        if readable < MIN_VAL_PHOTOS:
            folder = folder or class_counts(scan, None)[label][0]  # a class too small to hold any out
            findings.append({"kind": "small_class", "path": folder, "given": scan.classes[label],
                             "val_photos": readable, "confidence": round(1 - readable / MIN_VAL_PHOTOS, 3)})
    return findings


def imbalance_card(finding: dict) -> str:
    return (f"<b>{finding['given']}</b> ({finding['split']}): {finding['count']} photos, "
            f"{finding['ratio']:.0%} of the largest class's {finding['largest']}")


def small_class_card(finding: dict) -> str:
    return f"{finding['val_photos']} validation photos of <b>{finding['given']}</b>"


# --------------------------------------------------------------------------- the list

CHECKS = (
    Check("unreadable", "files that do not decode as images: train.py skips them",
          unreadable_findings, reason_card),
    Check("duplicate", "the same photo twice (exact copies, or resized, re-encoded or slightly cropped); "
                       "a copy across train/val makes val accuracy flatter the model",
          duplicate_findings, duplicate_card),
    Check("label", "photos that look like another class to a probe that never saw them: mislabelled, or hard",
          label_findings, label_card),
    Check("neither", "photos that look like none of the classes", neither_findings, neither_card),
    Check("tiny", "too few pixels to learn from", tiny_findings, tiny_card),
    Check("imbalance", "classes with far fewer photos than the largest", imbalance_findings, imbalance_card),
    Check("small_class", "classes with too few validation photos to measure them", small_class_findings,
          small_class_card),
    Check("ignored", "files beside the photos that train.py does not read", ignored_findings, reason_card),
)
KINDS = tuple(check.kind for check in CHECKS)
CHECK_OF_KIND = {check.kind: check for check in CHECKS}


def run_checks(scan: Scan, settings: CheckSettings) -> list[dict]:
    """Every check's findings, in the order of CHECKS."""
    return [finding for check in CHECKS for finding in check.run(scan, settings)]


def card_text(finding: dict) -> str:
    """What was found, in a few words of HTML (values the caller has escaped, or plain text)."""
    return CHECK_OF_KIND[finding["kind"]].card(finding)
