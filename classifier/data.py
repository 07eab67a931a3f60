"""Datasets: find labelled photos, split them, decode them once, and batch them.

    find_dataset(root)                  -> Dataset: class names and train / val lists of (path, label)
    PhotoFolder(root)                   -> torchvision DatasetFolder with ImageFolder semantics
    CachedImageFolder(root, "train")    -> torchvision VisionDataset of decoded, cached uint8 tensors
    Batches(images, labels, ...)        -> shuffled (uint8 images, labels) batches for training

Class names come from folder names, sorted, as torchvision's ImageFolder gives them, so a user
can hand `PhotoFolder` or `CachedImageFolder` to their own DataLoader and transforms. Run
`python -m classifier.data --help` to download a dataset or check a folder for bad images.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from torchvision.datasets import DatasetFolder, VisionDataset

from classifier import downloads
from classifier.cli import run_command
from classifier.errors import ClassifierError
from classifier.images import (IMAGE_EXTENSIONS, DecodedImages, Preprocessing, decode_images, decode_stream,
                               default_cache_dir, is_image_file, open_image, walk_images)

DATA_ENV = "CATSDOGS_DATA"
DEFAULT_DATA = "data/catsdogs"
LAYOUT_HELP = (
    "put photos in DIR/train/<class>/ and DIR/val/<class>/, or DIR/<class>/, or name them "
    "DIR/cat.1.jpg, DIR/dog.1.jpg; pass --data DIR or set " + DATA_ENV
)
NO_DATA_HELP = LAYOUT_HELP + "; or run `python -m classifier.data download` to fetch the Oxford-IIIT Pet photos"


def default_data_dir() -> str:
    return os.environ.get(DATA_ENV, DEFAULT_DATA)


# --------------------------------------------------------------------------- finding photos


class PhotoFolder(DatasetFolder):
    """torchvision's ImageFolder, with the guarantees this project makes about messy folders.

    Classes are the sub-folder names, sorted (ImageFolder's rule), or with `flat=True` the
    part of each file name before its first dot (Kaggle's cat.1.jpg). Hidden files and folders
    are passed over, and a folder reached twice through symbolic links is read once (torchvision's
    own walk follows a link loop forever). Items are (RGB PIL image, class index), opened by
    `images.open_image`, whose errors name the file.
    """

    def __init__(self, root: str | Path, flat: bool = False, transform: Callable | None = None,
                 target_transform: Callable | None = None):
        self.flat = flat
        super().__init__(str(root), loader=open_image, is_valid_file=is_image_file,
                         transform=transform, target_transform=target_transform)

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        if self.flat:
            classes = sorted({name.split(".")[0] for name in self.flat_files(directory)})
        else:
            classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
        return classes, {name: index for index, name in enumerate(classes)}

    @staticmethod
    def flat_files(directory: str) -> list[str]:
        return sorted(e.name for e in os.scandir(directory) if e.is_file() and is_image_file(e.name)
                      and "." in Path(e.name).stem)

    def make_dataset(self, directory: str, class_to_idx: dict[str, int], extensions=None,
                     is_valid_file=None, allow_empty: bool = False) -> list[tuple[str, int]]:
        if not class_to_idx:
            raise ClassifierError(f"no images found in {directory}: {NO_DATA_HELP}")
        if self.flat:
            samples = [(os.path.join(directory, name), class_to_idx[name.split(".")[0]])
                       for name in self.flat_files(directory)]
        else:
            samples = [(path, index) for name, index in class_to_idx.items()
                       for path in walk_images(Path(directory) / name)]
        check_classes(directory, list(class_to_idx), {index for _, index in samples})
        return samples


def check_classes(folder, classes: list[str], found: set[int]) -> None:
    """At least two classes, each with at least one image file."""
    if not found:
        raise ClassifierError(f"no images found in {folder}: {NO_DATA_HELP}")
    empty = [name for index, name in enumerate(classes) if index not in found]
    if empty:
        raise ClassifierError(f"{folder}: class folder(s) {', '.join(empty)} hold no images")
    if len(classes) < 2:
        raise ClassifierError(f"{folder}: found only one class ({classes[0]}); a classifier needs at least two")


@dataclass
class ImageList:
    paths: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)

    @classmethod
    def of(cls, folder: PhotoFolder, exclude: frozenset = frozenset()) -> "ImageList":
        kept = [(path, label) for path, label in folder.samples if normalized_path(path) not in exclude]
        return cls([path for path, _ in kept], [label for _, label in kept])


@dataclass
class Dataset:
    """Where a run's images are: class names and the train and val lists."""

    classes: list[str]
    train: ImageList
    val: ImageList
    layout: str
    root: str = ""


def find_dataset(root: str | Path, val_fraction: float = 0.2, seed: int = 0, exclude: frozenset = frozenset()) -> Dataset:
    """Find labelled images under root, in any of three layouts:

    (a) root/train/<class>/*, root/val/<class>/*      the val split is used as given
    (b) root/<class>/* (or root/train/<class>/* alone) val_fraction of each class is held out
    (c) root/<class>.<anything>.jpg (Kaggle)          likewise; label = name before first dot

    `torchvision:NAME` (downloads.SOURCES) is fetched and written out as (a) first. Photos whose
    normalized_path is in `exclude` (train.py --exclude) are left out before the split.
    """
    root = downloads.resolve(root)
    if not root.is_dir():
        raise ClassifierError(f"no data folder at {root}: {NO_DATA_HELP}")
    if (root / "train").is_dir():
        train = PhotoFolder(root / "train")
        if (root / "val").is_dir():
            val = PhotoFolder(root / "val")
            if val.classes != train.classes:
                raise ClassifierError(f"{root}: val/ has classes {val.classes} but train/ has {train.classes}")
            return Dataset(train.classes, ImageList.of(train, exclude), ImageList.of(val, exclude), "train/val", str(root))
        return Dataset(train.classes, *split(ImageList.of(train, exclude), val_fraction, seed), "train/<class>", str(root))
    folder = PhotoFolder(root, flat=not any(e.is_dir() and not e.name.startswith(".") for e in os.scandir(root)))
    layout = "flat" if folder.flat else "<class>"
    return Dataset(folder.classes, *split(ImageList.of(folder, exclude), val_fraction, seed), layout, str(root))


def find_photos(root: str | Path, val_fraction: float, seed: int, exclude: str = "") -> tuple[Dataset, int]:
    """A run's photos: find_dataset less the photos `exclude` names (see excluded_paths), and
    how many it left out."""
    if not exclude:
        return find_dataset(root, val_fraction, seed), 0
    dataset = find_dataset(root, val_fraction, seed, frozenset(excluded_paths(exclude, root)))
    everything = find_dataset(root, val_fraction, seed)
    return dataset, len(everything.train) + len(everything.val) - len(dataset.train) - len(dataset.val)


def split(images: ImageList, val_fraction: float, seed: int) -> tuple[ImageList, ImageList]:
    """Deterministic stratified split: the same files and seed give the same split."""
    if not 0 < val_fraction < 1:
        raise ClassifierError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    train, val = ImageList([], []), ImageList([], [])
    for label in sorted(set(images.labels)):
        paths = sorted(p for p, l in zip(images.paths, images.labels) if l == label)
        random.Random(f"{seed}-{label}").shuffle(paths)
        n_val = round(len(paths) * val_fraction) if len(paths) > 1 else 0
        n_val = min(max(n_val, 1 if len(paths) > 1 else 0), len(paths) - 1)
        for part, chunk in ((val, paths[:n_val]), (train, paths[n_val:])):
            part.paths += chunk
            part.labels += [label] * len(chunk)
    return train, val


FOLDER_KINDS = ("imbalance", "small_class")  # audit findings whose "path" is a class folder, not a photo


def normalized_path(path: str | os.PathLike) -> str:
    """The one spelling of a path that findings, --exclude and train.py compare: absolute,
    normalized, symbolic links kept (a link is the photo the user filed)."""
    return os.path.abspath(os.path.normpath(os.fspath(path)))


def excluded_paths(spec: str, root: str | Path = "") -> set[str]:
    """The photos `train.py --exclude SPEC` leaves out, as normalized_path()s. SPEC is an audit's
    findings.jsonl (every finding about a photo: delete the lines you disagree with first), a text
    file of paths (one a line, # comments), or comma-separated paths. A relative path is taken in
    the data folder `root` when a file is there (the studio lists a project's photos as ./CLASS/FILE,
    so that the list moves with them), else in the working folder. Folder-level findings
    (imbalance, small_class) name a class, not a photo, and are not excluded."""
    def listed(path: str) -> str:
        in_root = os.path.join(root, path)
        return normalized_path(in_root if os.path.isfile(in_root) else path)

    if not os.path.isfile(spec) or spec.lower().endswith(IMAGE_EXTENSIONS):
        if spec.lower().endswith((".jsonl", ".json", ".txt")) and "," not in spec:
            raise ClassifierError(f"--exclude {spec}: no such file")
        return {listed(p.strip()) for p in spec.split(",") if p.strip()}
    lines = Path(spec).read_text(errors="replace").splitlines()
    if not any(line.lstrip().startswith("{") for line in lines):
        return {listed(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")}
    paths = set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            finding = json.loads(line)
            path, kind = finding["path"], finding.get("kind")
        except (ValueError, KeyError, TypeError):
            raise ClassifierError(f"{spec}, line {number}: not a finding (a JSON object with a \"path\")") from None
        if kind not in FOLDER_KINDS:
            paths.add(listed(path))
    return paths


def stratified_folds(labels: torch.Tensor, folds: int, seed: int = 0) -> torch.Tensor:
    """Fold number of each photo: every class spread evenly over the folds, in a seeded order."""
    generator = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(labels), dtype=torch.long)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        fold_of[members] = torch.arange(len(members)) % folds
    return fold_of


# --------------------------------------------------------------------------- decoded photos


class CachedImageFolder(VisionDataset):
    """One split of a dataset, decoded once to uint8 tensors [3, S, S] and cached on disk.

        dataset = CachedImageFolder("data/catsdogs", "train", image_size=80)
        loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True)

    Items are (uint8 tensor, class index), through `transform` / `target_transform` if given
    (torchvision.transforms.v2 takes uint8 tensors). `images` [N, 3, S, S] and `targets` [N]
    hold the whole split: the training loop batches and augments those tensors directly.
    Unreadable files are left out and listed in `skipped` as (path, reason).
    """

    def __init__(self, root: str | Path, split: str = "train", image_size: int = 80, resize: str = "squash",
                 transform: Callable | None = None, target_transform: Callable | None = None,
                 val_fraction: float = 0.2, seed: int = 0, cache_dir: str | None = default_cache_dir(),
                 workers: int | None = None, dataset: Dataset | None = None):
        super().__init__(str(root), transform=transform, target_transform=target_transform)
        if split not in ("train", "val"):
            raise ClassifierError(f"unknown split {split!r}: use train or val")
        found = dataset or find_dataset(root, val_fraction, seed)
        files = found.train if split == "train" else found.val
        self.classes, self.split = found.classes, split
        self.class_to_idx = {name: index for index, name in enumerate(found.classes)}
        decoded = decode_images(files.paths, files.labels, Preprocessing(image_size, resize), cache_dir,
                                workers, desc=f"decoding {split}" + (f" at {image_size} px" if split == "val" else ""))
        self.images, self.targets, self.paths, self.skipped = decoded.images, decoded.labels, decoded.paths, decoded.skipped

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image, target = self.images[index], int(self.targets[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def decoded(self) -> DecodedImages:
        return DecodedImages(self.images, self.targets, self.paths, self.skipped)


def check_usable(train: CachedImageFolder, val: CachedImageFolder, root) -> None:
    """After unreadable images are skipped, every class still needs training images and
    the validation split at least one image; otherwise stop before training starts."""
    empty = [c for i, c in enumerate(train.classes) if not (train.targets == i).any()]
    if empty:
        raise ClassifierError(f"{root}: no readable training images left for class(es) "
                              f"{', '.join(empty)} after skipping {len(train.skipped)} unreadable")
    if not len(val):
        raise ClassifierError(f"{root}: no readable validation images left after skipping "
                              f"{len(val.skipped)} unreadable")


class Batches:
    """Batches of (inputs, labels) cut from tensors held in memory.

    shuffle draws a new order for each pass from `generator`; `passes` goes over the images
    that many times (a small folder's epoch, see plan.py); rank/world_size give each
    process of a distributed run its share of every global batch of batch_size * world_size
    images (rank r takes the r-th slice), so the ranks together see exactly the batches one
    process with the global batch size would see, in the same order.
    """

    def __init__(self, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, generator: torch.Generator | None = None,
                 rank: int = 0, world_size: int = 1, passes: int = 1):
        self.inputs, self.labels, self.batch_size = inputs, labels, batch_size
        self.shuffle, self.drop_last, self.generator = shuffle, drop_last, generator
        self.rank, self.world_size, self.passes = rank, world_size, passes

    def __len__(self) -> int:
        n, size = len(self.labels), self.batch_size * self.world_size
        return self.passes * (n // size if self.drop_last else math.ceil(n / size))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, size = len(self.labels), self.batch_size * self.world_size
        for _ in range(self.passes):
            order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
            for start in range(0, len(order), size):
                if self.drop_last and start + size > n:
                    break
                index = order[start:start + size].tensor_split(self.world_size)[self.rank]
                if len(index):
                    yield self.inputs[index], self.labels[index]


# --------------------------------------------------------------------------- command line


def scan_folder(root: str | Path, preprocessing: Preprocessing, workers: int | None = None):
    """Yield (path, error or None) for every image file below root."""
    for path, _, error in decode_stream(walk_images(Path(root)), preprocessing.decode, workers):
        yield path, error


def download(out: str, dataset: str) -> int:
    if dataset == "OxfordIIITPet":  # into the default data folder, as cat/dog
        counts = downloads.oxford_pets(Path(out), downloads.DATA_ROOT / "downloads")
    else:
        out = str(downloads.resolve(downloads.PREFIX + dataset))
        found = find_dataset(out)
        counts = {"train": len(found.train), "val": len(found.val)}
    for split_name, count in sorted(counts.items()):
        print(f"{split_name}: {count} images")
    print(f"wrote {out}; train with: python train.py --data {out}")
    return 0


def scan(folder: str) -> int:
    bad = 0
    for _, error in scan_folder(folder, Preprocessing()):
        if error:
            bad += 1
            print(error)
    print(f"{bad} unreadable image(s) found", file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m classifier.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="fetch a dataset with torchvision and write it as image folders")
    get.add_argument("--dataset", default="OxfordIIITPet", choices=sorted(downloads.SOURCES),
                     help="which dataset; OxfordIIITPet is written as cat/dog folders (default: %(default)s)")
    get.add_argument("--out", default=default_data_dir(),
                     help="OxfordIIITPet: where to write train/ and val/ (default: %(default)s); the others "
                          f"go to {downloads.DATA_ROOT}/<name>")
    check = commands.add_parser("scan", help="list the images in a folder that cannot be read")
    check.add_argument("folder", help="folder to check, recursively")
    args = parser.parse_args(argv)
    if args.command == "download":
        return run_command(download, args.out, args.dataset)
    return run_command(scan, args.folder)


if __name__ == "__main__":
    sys.exit(main())
