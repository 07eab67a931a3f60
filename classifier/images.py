"""Image files to uint8 tensors: find them, open anything Pillow reads, decode once, cache.

    Preprocessing(image_size=80).decode("cat.jpg")   -> uint8 tensor [3, 80, 80]
    decode_images(paths, labels, preprocessing)      -> DecodedImages: a whole split in one tensor,
                                                        decoded by a thread pool, cached on disk

Every decode in the project (training, evaluation, predict, serve, audit) goes through
`Preprocessing.decode`, and every file is opened by `open_image`, which turns each way a file
can be unusable into one ClassifierError naming it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from classifier.errors import ClassifierError
from classifier.files import atomic_save
from classifier.progress import progress

CACHE_ENV = "CLASSIFIER_CACHE"
DEFAULT_CACHE = "~/.cache/catsdogs-classifier"
# torchvision's ImageFolder extensions (torchvision.datasets.folder.IMG_EXTENSIONS), and GIF;
# written out because importing torchvision costs seconds that predicting one photo should not pay
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
MAX_PIXELS = 100_000_000  # refuse larger images before decoding (decompression bombs)


def default_cache_dir() -> str:
    return os.path.expanduser(os.environ.get(CACHE_ENV, DEFAULT_CACHE))


def is_image_file(name: str) -> bool:
    """An image by its extension, and not hidden (.DS_Store, ._photo.jpg)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


@dataclass
class Preprocessing:
    """How a photo becomes the tensor a model sees. Stored in every checkpoint.

    resize: "squash" resizes the whole photo to size x size (keeps everything in view);
            "center_crop" resizes the shorter side to size and crops the middle.
    mean, std: per-channel normalization applied to pixels scaled to [0, 1].
    tta_sizes: further sizes test-time augmentation decodes the photo at (larger ones show
            more detail); the model's outputs at every size are averaged.
    tta_below: the other test-time views only for photos whose first view's softmax probability
            is below this (1: for every photo); see tta.py.
    """

    image_size: int = 80
    resize: str = "squash"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    tta_sizes: tuple[int, ...] = ()
    tta_below: float = 1.0

    def __post_init__(self):
        if self.resize not in ("squash", "center_crop"):
            raise ClassifierError(f"unknown resize mode {self.resize!r}: use squash or center_crop")
        if any(size < 1 for size in self.tta_sizes):
            raise ClassifierError(f"test-time sizes must be positive, got {list(self.tta_sizes)}")
        self.mean, self.std, self.tta_sizes = tuple(self.mean), tuple(self.std), tuple(self.tta_sizes)

    def to_dict(self) -> dict:
        return asdict(self)

    def decode(self, source: "Source", name: str | None = None) -> torch.Tensor:
        """Read one image (see open_image) as a uint8 tensor [3, size, size] (image_size)."""
        image = open_image(source, size_hint=self.image_size, name=name)
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


Source = str | Path | Image.Image | bytes  # a file, an image opened by the caller, or a file's bytes


def open_image(source: Source, size_hint: int | None = None, name: str | None = None) -> Image.Image:
    """Open any image Pillow can read as RGB, upright, first frame; ClassifierError if not.

    source: a path, a PIL image, or the bytes of a file (an upload: never written to disk, and
    Pillow gets no file name to read); `name` names it in error messages.

    size_hint lets JPEG decoding skip detail finer than needed (Pillow's draft mode), which
    makes decoding a 500x375 photo for a 64 px model several times faster.

    Sizes are checked from the header before any pixel is decoded: an image that would
    decode to more than MAX_PIXELS (after draft mode) is refused, and Pillow's own guard
    refuses anything claiming over twice Image.MAX_IMAGE_PIXELS as soon as it is opened.
    """
    path = source if isinstance(source, (str, Path)) else None
    if name is None:
        name = path or (getattr(source, "filename", "") or "image" if isinstance(source, Image.Image) else "upload")
    try:
        if isinstance(source, Image.Image):  # opened by the caller, maybe not decoded yet
            return _upright_rgb(source, name)
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else path) as image:
            if size_hint and image.format == "JPEG":
                image.draft("RGB", (size_hint, size_hint))
            return _upright_rgb(image, name)
    except ClassifierError:
        raise
    except FileNotFoundError:
        reason = "broken symbolic link" if path and os.path.islink(path) else "no such file"
    except Image.UnidentifiedImageError:
        empty = not source if isinstance(source, bytes) else os.path.getsize(path) == 0
        reason = "empty file" if empty else "not an image format Pillow knows"
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
        cache_file = Path(cache_dir) / f"decoded-{cache_key(paths, labels, preprocessing)}.pt"
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
    for index, tensor, error in progress(stream, desc, total=len(paths)):
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
        try:
            atomic_save({"images": decoded.images, "labels": decoded.labels,
                         "paths": decoded.paths, "skipped": decoded.skipped}, cache_file)
        except ClassifierError as error:  # the cache only saves time: go on without it
            print(f"warning: decode cache not written: {error}", file=sys.stderr)
    return decoded


def cache_key(paths, labels, preprocessing: Preprocessing) -> str:
    """A name for what decoding these files this way gives: any change to a file, the list or the
    decode settings changes it."""
    digest = hashlib.sha256()
    digest.update(json.dumps([preprocessing.image_size, preprocessing.resize]).encode())
    for path, label in zip(paths, labels):
        try:
            stat = os.stat(path)
            digest.update(f"{path}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0{label}\0missing\n".encode())
    return digest.hexdigest()[:20]


def walk_images(folder: Path, keep: Callable[[str], bool] = is_image_file) -> list[str]:
    """Image files (or the files whose name `keep` accepts) below folder, sorted; follows
    symlinks but never the same folder twice."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames.clear()
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, name) for name in filenames if keep(name)]
    return sorted(found)


