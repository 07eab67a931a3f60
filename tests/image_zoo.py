"""Messy files a real photo folder holds, made on the spot, with the outcome each must have.

ZOO maps a file name to (how to make it, expected): expected is an RGB colour the decoded
image must average to (it decodes), or a fragment of the one-line error it must give.
HIDDEN lists what a folder scan passes over without trying to decode.
"""

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header (checksums right) claiming width x height, with almost no data."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _save(image: Image.Image, **options):
    return lambda path, real: image.save(path, **options)


def _palette(path, real):
    image = Image.new("P", (20, 10), 1)
    image.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image.save(path)


def _animated(path, real):
    frames = [Image.new("RGB", (20, 10), c) for c in (RED, GREEN, BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)


def _rotated(path, real):
    """Stored sideways: left half blue, right half red; EXIF says rotate 90 degrees clockwise."""
    image = Image.new("RGB", (60, 20), RED)
    image.paste(BLUE, (0, 0, 30, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif, quality=95)


def _truncated(path, real):
    data = real.read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


ZOO = {
    "empty.jpg": (lambda p, real: Path(p).write_bytes(b""), "empty file"),
    "truncated.jpg": (_truncated, "truncated"),
    "text.jpg": (lambda p, real: Path(p).write_text("not a photo, a shopping list\n"), "not an image format"),
    "random.jpg": (lambda p, real: Path(p).write_bytes(np.random.default_rng(0).bytes(4000)), "not an image format"),
    "alpha.png": (_save(Image.new("RGBA", (20, 10), (255, 0, 0, 0))), WHITE),  # transparent: on white
    "palette.png": (_palette, (10, 200, 30)),
    "gray.jpg": (_save(Image.new("L", (20, 10), 100)), (100, 100, 100)),
    "gray16.png": (_save(Image.fromarray(np.full((10, 20), 32896, np.uint16))), (128, 128, 128)),
    "cmyk.jpg": (_save(Image.new("CMYK", (20, 10), (0, 255, 255, 0))), RED),
    "rotated.jpg": (_rotated, "upright"),
    "animated.gif": (_animated, RED),  # the first frame
    "photo.webp": (_save(Image.new("RGB", (20, 10), BLUE), quality=100), BLUE),
    "png_named.jpg": (_save(Image.new("RGB", (20, 10), GREEN), format="PNG"), GREEN),
    "jpeg_named.png": (_save(Image.new("RGB", (20, 10), BLUE), format="JPEG", quality=100), BLUE),
    "one_pixel.jpg": (_save(Image.new("RGB", (1, 1), GREEN), quality=100), GREEN),
    "bomb.png": (lambda p, real: Path(p).write_bytes(png_claiming(100_000, 100_000)), "decompression bomb"),
    "bomb_under_pillow_limit.png": (lambda p, real: Path(p).write_bytes(png_claiming(12_000, 10_000)),
                                    "decompression bomb"),
    "real.jpg": (lambda p, real: Path(p).write_bytes(real.read_bytes()), None),  # a real photo: decodes, colour not checked
    "broken_link.jpg": (lambda p, real: os.symlink(Path(p).parent / "gone.jpg", p), "broken symbolic link"),
    "loop_a.jpg": (lambda p, real: os.symlink(Path(p).parent / "loop_b.jpg", p), "Too many levels of symbolic links"),
    "loop_b.jpg": (lambda p, real: os.symlink(Path(p).parent / "loop_a.jpg", p), "Too many levels of symbolic links"),
}

HIDDEN = {  # passed over by folder scans (hidden files, a folder named like an image, a loop)
    ".DS_Store": (lambda p, real: Path(p).write_bytes(b"\0\0\0\1Bud1\0\0\x10\0"), "not an image format"),
    "._real.jpg": (lambda p, real: Path(p).write_bytes(b"\0\5\x16\7\0\2\0\0Mac OS X        "), "not an image format"),
    "folder.jpg": (lambda p, real: os.mkdir(p), "Is a directory"),
    "loop": (lambda p, real: os.symlink(Path(p).parent, p), None),
}


def decodes(expected) -> bool:
    return not isinstance(expected, str) or expected == "upright"


def make_zoo(folder: Path, real_photo: Path, names=None) -> dict[str, Path]:
    """Write the zoo (or the named part of it) into folder, using one real JPEG; name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, (make, _) in {**ZOO, **HIDDEN}.items():
        if names is None or name in names:
            make(folder / name, real_photo)
            made[name] = folder / name
    return made


def check_decoded(tensor, expected) -> None:
    """Assert a decoded uint8 [3, S, S] tensor shows what the zoo entry promises."""
    assert tensor.dtype == torch.uint8 and tensor.shape[0] == 3
    if expected == "upright":  # blue on top, red below once the EXIF rotation is applied
        top, bottom = tensor[:, 1].float().mean(1), tensor[:, -2].float().mean(1)
        assert top[2] > 200 > top[0] and bottom[0] > 200 > bottom[2]
    elif expected is not None:
        mean = tensor.float().mean((1, 2)).tolist()
        assert all(abs(m - e) <= 6 for m, e in zip(mean, expected)), (mean, expected)
