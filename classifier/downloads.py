"""Datasets fetched with torchvision and written out as image folders the project reads.

    python train.py --data torchvision:OxfordIIITPet      # cat/dog, from the breeds' binary category
    python train.py --data torchvision:CIFAR10            # 10 classes of 32 px photos, for a quick try

The archives download once into DATA_ROOT/downloads (torchvision's own progress bar), and the
photos are written once as DATA_ROOT/<name>/{train,val}/<class>/ (hard links where possible), so
every later run, the decode cache and other tools see an ordinary folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torchvision

from classifier.errors import ClassifierError
from classifier.progress import progress

DATA_ROOT = Path("data")
PREFIX = "torchvision:"
OFFLINE_HELP = ("without a network, put your own photos in DIR/train/<class>/ and DIR/val/<class>/ "
                "(or DIR/<class>/) and pass --data DIR")


def fetch(name: str, root: Path, download: bool, **options):
    """torchvision.datasets.<name>, downloaded into root when missing; one-line errors offline."""
    try:
        return getattr(torchvision.datasets, name)(str(root), download=download, **options)
    except RuntimeError as error:  # torchvision's "Dataset not found or corrupted"
        raise ClassifierError(f"{name} not found under {root} ({error})") from None
    except OSError as error:
        raise ClassifierError(f"could not download {name} into {root} "
                              f"({getattr(error, 'reason', None) or error}); {OFFLINE_HELP}") from None


def link_or_copy(source: str, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        return
    if os.stat(source).st_dev == os.stat(target.parent).st_dev:
        os.link(source, target)
    else:
        target.write_bytes(Path(source).read_bytes())


def oxford_pets(out: Path, root: Path, download: bool = True) -> dict:
    """Oxford-IIIT Pet as out/{train,val}/{cat,dog}: its trainval split becomes train/, its test
    split val/. With download=False the archives must already be unpacked under root."""
    counts = {}
    for split, folder in (("trainval", "train"), ("test", "val")):
        pets = fetch("OxfordIIITPet", root, download, split=split,
                     target_types="binary-category")
        for image_path, label in progress(list(zip(pets._images, pets._bin_labels)), f"writing {folder}/"):
            name = pets.bin_classes[label].lower()
            link_or_copy(image_path, out / folder / name / Path(image_path).name)
            counts[f"{folder}/{name}"] = counts.get(f"{folder}/{name}", 0) + 1
    return counts


def cifar(name: str, out: Path, root: Path, download: bool = True) -> dict:
    """CIFAR-10/100 as out/{train,val}/<class>/<index>.png: its train split becomes train/, its
    test split val/ (the pixel arrays are written once as PNG files)."""
    counts = {}
    for train, folder in ((True, "train"), (False, "val")):
        dataset = fetch(name, root, download, train=train)
        for index, (pixels, label) in enumerate(progress(list(zip(dataset.data, dataset.targets)), f"writing {folder}/")):
            target = out / folder / dataset.classes[label] / f"{index}.png"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                torchvision.transforms.functional.to_pil_image(pixels).save(target)
            counts[f"{folder}/{dataset.classes[label]}"] = counts.get(f"{folder}/{dataset.classes[label]}", 0) + 1
    return counts


SOURCES = {  # name after "torchvision:" -> how to write it out as folders
    "OxfordIIITPet": oxford_pets,
    "CIFAR10": lambda out, root, download=True: cifar("CIFAR10", out, root, download),
    "CIFAR100": lambda out, root, download=True: cifar("CIFAR100", out, root, download),
}


def resolve(spec: str | Path) -> Path:
    """--data as a folder: `torchvision:NAME` is fetched and written out first (once)."""
    if not str(spec).startswith(PREFIX):
        return Path(spec)
    name = str(spec)[len(PREFIX):]
    if name not in SOURCES:
        raise ClassifierError(f"unknown dataset {spec!r}: choose one of "
                              f"{', '.join(PREFIX + n for n in SOURCES)}, or a folder")
    out = DATA_ROOT / name.lower()
    if not (out / ".complete").exists():
        SOURCES[name](out, DATA_ROOT / "downloads")
        (out / ".complete").touch()  # a run stopped while writing starts the writing again
    return out
