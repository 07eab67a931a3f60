"""Small JPEGs of a project's photos, made on the server and cached on disk, so that a page of
10,000 photos loads a few kilobytes a photo and the browser never decodes the originals.

A thumbnail is PROJECT/.thumbnails/AB/KEY.jpg, KEY a hash of the photo's path in the project, its
size and modification time: a changed or moved photo gets a new one; the folder can be deleted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image

from classifier.errors import ClassifierError
from classifier.images import open_image

FOLDER = ".thumbnails"
SIZE = 160  # pixels, the longer side
DECODE_SIZE = 2 * SIZE  # JPEG draft mode decodes at least this large: sharp thumbnails, 4-16x less work
QUALITY = 80


def key(photo: Path, relative: str) -> str:
    stat = photo.stat()
    return hashlib.sha1(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()


def location(cache: Path, photo: Path, relative: str) -> Path:
    name = key(photo, relative)
    return cache / name[:2] / f"{name}.jpg"


def store(cache: Path, photo: Path, relative: str, image: Image.Image) -> Path:
    """The thumbnail of `photo`, from its already decoded `image` (an import decodes once)."""
    path = location(cache, photo, relative)
    path.parent.mkdir(parents=True, exist_ok=True)
    small = image.copy()
    small.thumbnail((SIZE, SIZE))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    small.save(temporary, "JPEG", quality=QUALITY)
    os.replace(temporary, path)
    return path


def cached(cache: Path, photo: Path, relative: str) -> Path:
    """The thumbnail file of `photo`, made now if it is not cached; ClassifierError if the photo
    does not decode."""
    path = location(cache, photo, relative)
    if path.is_file():
        return path
    try:
        return store(cache, photo, relative, open_image(photo, size_hint=DECODE_SIZE, name=photo.name))
    except OSError as error:
        raise ClassifierError(f"{photo.name}: cannot make its thumbnail ({error.strerror or error})") from None
