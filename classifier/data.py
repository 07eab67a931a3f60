"""Images in, uint8 tensors out: find, decode once, cache, batch and augment.

The path from a folder of photos to training batches:

  find_dataset(root)         -> Dataset: train / val lists of (path, label) and class names,
                                from any of three layouts (see find_dataset)
  Preprocessing.decode(path) -> one uint8 tensor [3, S, S]; the one decode used everywhere
  decode_images(list, ...)   -> DecodedImages: all images of a split as one uint8 tensor,
                                decoded once by a thread pool and cached on disk
  Batches(decoded, ...)      -> (uint8 images, labels) batches, shuffled under a seed
  augment(batch, generator)  -> float batch: random resized crops and flips, whole batch at once
  Preprocessing.normalize(x) -> the float tensor a model sees

Run `python -m classifier.data --help` to download a dataset or check a folder for bad images.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from tqdm import tqdm

from classifier.errors import ClassifierError

DATA_ENV = "CATSDOGS_DATA"
DEFAULT_DATA = "data/catsdogs"
CACHE_ENV = "CLASSIFIER_CACHE"
DEFAULT_CACHE = "~/.cache/catsdogs-classifier"
# torchvision's ImageFolder extensions, and GIF (written out: importing torchvision takes
# about a second, which a single-photo predict should not pay)
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
MAX_PIXELS = 100_000_000  # refuse larger images before decoding (decompression bombs)

LAYOUT_HELP = (
    "put photos in DIR/train/<class>/ and DIR/val/<class>/, or DIR/<class>/, or name them "
    "DIR/cat.1.jpg, DIR/dog.1.jpg; pass --data DIR or set " + DATA_ENV
)
NO_DATA_HELP = LAYOUT_HELP + "; or run `python -m classifier.data download` to fetch the Oxford-IIIT Pet photos"


def default_data_dir() -> str:
    return os.environ.get(DATA_ENV, DEFAULT_DATA)


def default_cache_dir() -> str:
    return os.path.expanduser(os.environ.get(CACHE_ENV, DEFAULT_CACHE))


# --------------------------------------------------------------------------- decoding


@dataclass
class Preprocessing:
    """How a photo becomes the tensor a model sees. Stored in every checkpoint.

    resize: "squash" resizes the whole photo to size x size (keeps everything in view);
            "center_crop" resizes the shorter side to size and crops the middle.
    mean, std: per-channel normalization applied to pixels scaled to [0, 1].
    tta_sizes: further sizes test-time augmentation decodes the photo at (larger ones show
            more detail); the model's outputs at every size are averaged.
    """

    image_size: int = 80
    resize: str = "squash"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    tta_sizes: tuple[int, ...] = ()

    def __post_init__(self):
        if self.resize not in ("squash", "center_crop"):
            raise ClassifierError(f"unknown resize mode {self.resize!r}: use squash or center_crop")
        if any(size < 1 for size in self.tta_sizes):
            raise ClassifierError(f"test-time sizes must be positive, got {list(self.tta_sizes)}")
        self.mean, self.std, self.tta_sizes = tuple(self.mean), tuple(self.std), tuple(self.tta_sizes)

    def sizes(self, tta: bool) -> list["Preprocessing"]:
        """The decodings a prediction uses: this one, and with `tta` one per tta size."""
        return [self] + [replace(self, image_size=size, tta_sizes=()) for size in self.tta_sizes if tta]

    def to_dict(self) -> dict:
        return asdict(self)

    def decode(self, source: str | Path | Image.Image) -> torch.Tensor:
        """Read one image (path or PIL image) as a uint8 tensor [3, size, size] (image_size)."""
        image = open_image(source, size_hint=self.image_size)
        size = (self.image_size, self.image_size)
        if self.resize == "squash":
            image = image.resize(size, Image.Resampling.BILINEAR)
        else:
            image = ImageOps.fit(image, size, Image.Resampling.BILINEAR)
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [0, 255] or float [0, 1] images -> normalized float tensor."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255)
        mean = torch.tensor(self.mean, device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, 3, 1, 1)
        return (images - mean) / std


def open_image(source: str | Path | Image.Image, size_hint: int | None = None) -> Image.Image:
    """Open any image Pillow can read as RGB, upright, first frame; ClassifierError if not.

    size_hint lets JPEG decoding skip detail finer than needed (Pillow's draft mode), which
    makes decoding a 500x375 photo for a 64 px model several times faster.

    Sizes are checked from the header before any pixel is decoded: an image that would
    decode to more than MAX_PIXELS (after draft mode) is refused, and Pillow's own guard
    refuses anything claiming over twice Image.MAX_IMAGE_PIXELS as soon as it is opened.
    """
    path = None if isinstance(source, Image.Image) else source
    name = (getattr(source, "filename", "") or "image") if path is None else source
    try:
        if path is None:  # an image opened by the caller may not be decoded yet
            return _upright_rgb(source, name)
        with Image.open(path) as image:
            if size_hint and image.format == "JPEG":
                image.draft("RGB", (size_hint, size_hint))
            return _upright_rgb(image, name)
    except ClassifierError:
        raise
    except FileNotFoundError:
        reason = "broken symbolic link" if path and os.path.islink(path) else "no such file"
    except Image.UnidentifiedImageError:
        reason = "empty file" if path and os.path.getsize(path) == 0 else "not an image format Pillow knows"
    except Exception as error:  # Pillow raises many types on broken files; all mean "unreadable"
        reason = getattr(error, "strerror", None) or (str(error).splitlines() or [type(error).__name__])[0]
    raise ClassifierError(f"{name}: cannot read image ({reason})")


def _upright_rgb(image: Image.Image, name) -> Image.Image:
    """Refuse oversized images, then decode, apply the EXIF orientation and convert to RGB."""
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ClassifierError(
            f"{name}: image claims {width}x{height} pixels, more than the "
            f"{MAX_PIXELS:,} allowed (a decompression bomb?); refused")
    image.load()
    return _to_rgb(ImageOps.exif_transpose(image))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any mode -> 8-bit RGB; transparency is composited on white, 16-bit is rescaled."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(pixels.max()), 1.0)
        image = Image.fromarray(np.clip(pixels / top * 255, 0, 255).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB") if image.mode != "RGB" else image


@dataclass
class DecodedImages:
    """A split decoded to one uint8 tensor; `skipped` lists (path, reason) of unreadable files."""

    images: torch.Tensor  # [N, 3, S, S] uint8
    labels: torch.Tensor  # [N] int64
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def decode_stream(
    sources: Iterable, decode: Callable[[object], torch.Tensor], workers: int | None = None,
    chunk: int = 256,
) -> Iterator[tuple[object, torch.Tensor | None, str | None]]:
    """Yield (source, decode(source), None) or (source, None, error message), in order.

    Decoding runs in a thread pool (Pillow releases the GIL while decoding), a chunk at a
    time, so memory stays bounded however many images come in.
    """

    def decode_one(source):
        try:
            return source, decode(source), None
        except ClassifierError as error:
            return source, None, str(error)

    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        batch = []
        for source in sources:
            batch.append(source)
            if len(batch) == chunk:
                yield from pool.map(decode_one, batch)
                batch = []
        yield from pool.map(decode_one, batch)


def decode_images(
    paths: Sequence[str],
    labels: Sequence[int],
    preprocessing: Preprocessing,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    desc: str = "decoding",
) -> DecodedImages:
    """Decode every image once into one tensor, or load it from the on-disk cache.

    The cache file's name is a hash of every path, its size and modification time, and the
    decode settings: changing a file, adding one, or changing the image size misses the cache.
    Cache files are loaded memory-mapped, so a dataset larger than memory still works.
    """
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"decoded-{_cache_key(paths, labels, preprocessing)}.pt"
        if cache_file.exists():
            try:
                cached = torch.load(cache_file, mmap=True, weights_only=True)
                return DecodedImages(cached["images"], cached["labels"], cached["paths"],
                                     [tuple(s) for s in cached["skipped"]])
            except Exception:  # an unreadable cache is rebuilt, never trusted
                cache_file.unlink(missing_ok=True)

    size = preprocessing.image_size
    images = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    kept, skipped = [], []
    stream = decode_stream(range(len(paths)), lambda i: preprocessing.decode(paths[i]), workers)
    for index, tensor, error in tqdm(stream, total=len(paths), desc=desc, unit="img", leave=False, disable=None):
        if tensor is None:
            skipped.append((paths[index], error))
        else:
            images[len(kept)] = tensor
            kept.append(index)
    decoded = DecodedImages(
        images[: len(kept)].clone() if skipped else images,
        torch.tensor([labels[i] for i in kept], dtype=torch.long),
        [paths[i] for i in kept],
        skipped,
    )
    if cache_file is not None:
        from classifier.checkpoint import atomic_save

        try:
            atomic_save({"images": decoded.images, "labels": decoded.labels,
                         "paths": decoded.paths, "skipped": decoded.skipped}, cache_file)
        except ClassifierError as error:  # the cache only saves time: go on without it
            print(f"warning: decode cache not written: {error}", file=sys.stderr)
    return decoded


def decode_sizes(paths: Sequence[str], labels: Sequence[int], preprocessing: Preprocessing,
                 tta: bool, cache_dir: str | Path | None = None, workers: int | None = None,
                 desc: str = "decoding") -> list[DecodedImages]:
    """decode_images at the image size and, with `tta`, at each tta size: aligned lists (an
    unreadable file is skipped at every size)."""
    return [decode_images(paths, labels, p, cache_dir, workers, desc=desc + (f" at {p.image_size} px" if i else ""))
            for i, p in enumerate(preprocessing.sizes(tta))]


def check_usable(train: DecodedImages, val: DecodedImages, classes: list[str], root) -> None:
    """After unreadable images are skipped, every class still needs training images and
    the validation split at least one image; otherwise stop before training starts."""
    empty = [c for i, c in enumerate(classes) if not (train.labels == i).any()]
    if empty:
        raise ClassifierError(f"{root}: no readable training images left for class(es) "
                              f"{', '.join(empty)} after skipping {len(train.skipped)} unreadable")
    if not len(val):
        raise ClassifierError(f"{root}: no readable validation images left after skipping "
                              f"{len(val.skipped)} unreadable")


def _cache_key(paths, labels, preprocessing: Preprocessing) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps([preprocessing.image_size, preprocessing.resize]).encode())
    for path, label in zip(paths, labels):
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0{label}\0missing\n".encode())
    return digest.hexdigest()[:20]


# --------------------------------------------------------------------------- finding images


@dataclass
class ImageList:
    paths: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.paths)


@dataclass
class Dataset:
    """Where a run's images are: class names and the train and val lists."""

    classes: list[str]
    train: ImageList
    val: ImageList
    layout: str


def find_dataset(root: str | Path, val_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """Find labelled images under root, in any of three layouts:

    (a) root/train/<class>/*, root/val/<class>/*      the val split is used as given
    (b) root/<class>/*                                val_fraction of each class is held out
    (c) root/<class>.<anything>.jpg (Kaggle)          likewise; label = name before first dot

    Hidden files, files without an image extension and symlink loops are passed over.
    """
    root = Path(root)
    if not root.is_dir():
        raise ClassifierError(f"no data folder at {root}: {NO_DATA_HELP}")
    if (root / "train").is_dir():
        classes = _class_folders(root / "train")
        train = _list_class_folders(root / "train", classes)
        if (root / "val").is_dir():
            val_classes = _class_folders(root / "val")
            if val_classes != classes:
                raise ClassifierError(
                    f"{root}: val/ has classes {val_classes} but train/ has {classes}")
            return Dataset(classes, train, _list_class_folders(root / "val", classes), "train/val")
        return Dataset(classes, *_split(train, val_fraction, seed), "train/<class>")
    classes = _class_folders(root)
    if classes:
        return Dataset(classes, *_split(_list_class_folders(root, classes), val_fraction, seed),
                       "<class>")
    files = [p for p in walk_images(root) if Path(p).parent == root and "." in Path(p).stem]
    classes = sorted({Path(p).name.split(".")[0] for p in files})
    _check_classes(root, classes, [Path(p).name.split(".")[0] for p in files])
    labels = [classes.index(Path(p).name.split(".")[0]) for p in files]
    return Dataset(classes, *_split(ImageList(files, labels), val_fraction, seed), "flat")


def _class_folders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def _list_class_folders(folder: Path, classes: list[str]) -> ImageList:
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = walk_images(folder / name)
        paths += found
        labels += [label] * len(found)
    _check_classes(folder, classes, [classes[i] for i in labels])
    return ImageList(paths, labels)


def _check_classes(folder: Path, classes: list[str], found_labels: list[str]) -> None:
    if not found_labels:
        raise ClassifierError(f"no images found in {folder}: {NO_DATA_HELP}")
    empty = [c for c in classes if c not in set(found_labels)]
    if empty:
        raise ClassifierError(f"{folder}: class folder(s) {', '.join(empty)} hold no images")
    if len(classes) < 2:
        raise ClassifierError(
            f"{folder}: found only one class ({classes[0]}); a classifier needs at least two")


def walk_images(folder: Path) -> list[str]:
    """Image files below folder, sorted; follows symlinks but never the same folder twice."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [
            os.path.join(dirpath, name) for name in filenames
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return sorted(found)


def _split(images: ImageList, val_fraction: float, seed: int) -> tuple[ImageList, ImageList]:
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


# --------------------------------------------------------------------------- batches


class Batches:
    """Batches of (uint8 images, labels) from decoded images held in memory.

    shuffle draws a new order each epoch from `generator`; rank/world_size give each
    process of a distributed run its share of every global batch of batch_size * world_size
    images (rank r takes the r-th slice), so the ranks together see exactly the batches one
    process with the global batch size would see, in the same order.
    """

    def __init__(self, decoded: DecodedImages, batch_size: int, shuffle: bool = False,
                 drop_last: bool = False, generator: torch.Generator | None = None,
                 rank: int = 0, world_size: int = 1):
        self.decoded, self.batch_size = decoded, batch_size
        self.shuffle, self.drop_last, self.generator = shuffle, drop_last, generator
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        n, size = len(self.decoded), self.batch_size * self.world_size
        return n // size if self.drop_last else math.ceil(n / size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, size = len(self.decoded), self.batch_size * self.world_size
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, len(order), size):
            if self.drop_last and start + size > n:
                break
            index = order[start:start + size].tensor_split(self.world_size)[self.rank]
            if len(index):
                yield self.decoded.images[index], self.decoded.labels[index]


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


# --------------------------------------------------------------------------- command line


def download_oxford_pets(out: str | Path, root: str | Path, download: bool = True) -> dict:
    """Fetch the Oxford-IIIT Pet photos with torchvision and write them as out/{train,val}/{cat,dog}.

    The dataset's trainval split becomes train/, its test split val/. With download=False
    the archives must already be unpacked under root (torchvision's layout).
    """
    from torchvision.datasets import OxfordIIITPet

    counts = {}
    for split, folder in (("trainval", "train"), ("test", "val")):
        try:
            pets = OxfordIIITPet(str(root), split=split, target_types="binary-category",
                                 download=download)
        except RuntimeError as error:
            raise ClassifierError(f"Oxford-IIIT Pet not found under {root} ({error})") from None
        except OSError as error:
            raise ClassifierError(
                f"could not download Oxford-IIIT Pet into {root} ({error}); without a network, "
                f"put your own photos in place instead: {LAYOUT_HELP}") from None
        for image_path, label in zip(pets._images, pets._bin_labels):
            target = Path(out) / folder / pets.bin_classes[label].lower() / Path(image_path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.link(image_path, target) if _same_device(image_path, target.parent) \
                    else target.write_bytes(Path(image_path).read_bytes())
            counts[f"{folder}/{target.parent.name}"] = counts.get(f"{folder}/{target.parent.name}", 0) + 1
    return counts


def _same_device(a, b) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def scan_folder(root: str | Path, preprocessing: Preprocessing, workers: int | None = None):
    """Yield (path, error or None) for every image file below root."""
    for path, _, error in decode_stream(walk_images(Path(root)), preprocessing.decode, workers):
        yield path, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m classifier.data", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser("download", help="fetch Oxford-IIIT Pet as cat/dog folders")
    get.add_argument("--out", default=default_data_dir(), help="where to write train/ and val/ (default: %(default)s)")
    get.add_argument("--root", default="data/oxford-iiit-pet-download",
                     help="where torchvision keeps the downloaded archives (default: %(default)s)")
    scan = commands.add_parser("scan", help="list the images in a folder that cannot be read")
    scan.add_argument("folder", help="folder to check, recursively")
    args = parser.parse_args(argv)
    try:
        if args.command == "download":
            for split, count in sorted(download_oxford_pets(args.out, args.root).items()):
                print(f"{split}: {count} images")
            print(f"wrote {args.out}; train with: python train.py --data {args.out}")
            return 0
        bad = 0
        for _, error in scan_folder(args.folder, Preprocessing()):
            if error:
                bad += 1
                print(error)
        print(f"{bad} unreadable image(s) found", file=sys.stderr)
        return 1 if bad else 0
    except ClassifierError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
