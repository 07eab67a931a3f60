"""Shared fixtures: small real subsets of ../shared/data/catsdogs and images made on the spot."""

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from classifier.train import main as train_main

REPO = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path:
    return Path(os.environ.get("CATSDOGS_DATA", REPO.parent / "shared" / "data" / "catsdogs"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = real_data_dir()
    if not (root / "train" / "cat").is_dir():
        pytest.skip(f"real photos not found at {root}; set CATSDOGS_DATA (see README)")
    return root


def copy_subset(root: Path, out: Path, per_class: dict[str, int], classes=("cat", "dog")) -> Path:
    """out/<split>/<class>/ with the first n photos of each class of root/<split>/."""
    for split, n in per_class.items():
        for name in classes:
            files = sorted((root / split / name).iterdir(), key=lambda p: int(p.name.split(".")[1]))[:n]
            target = out / split / name
            target.mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copy(f, target / f.name)
    return out


@pytest.fixture(scope="session")
def small_real(real_data, tmp_path_factory) -> Path:
    """200 train and 100 val photos per class: enough to learn something in seconds at 32 px."""
    return copy_subset(real_data, tmp_path_factory.mktemp("small_real"), {"train": 200, "val": 100})


@pytest.fixture(scope="session")
def tiny_real(real_data, tmp_path_factory) -> Path:
    """12 train and 6 val photos per class, for tests of mechanics rather than learning."""
    return copy_subset(real_data, tmp_path_factory.mktemp("tiny_real"), {"train": 12, "val": 6})


def make_image(path: Path, color=(200, 30, 30), size=(40, 30), mode="RGB", fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else 128).save(path, format=fmt)
    return path


def train_args(data, out, cache, *extra) -> list[str]:
    """Command-line flags for a fast test run."""
    return ["--data", str(data), "--out", str(out), "--cache-dir", str(cache), "--image-size", "32",
            "--batch-size", "16", "--channels", "8,16", "--device", "cpu", *map(str, extra)]


@pytest.fixture(scope="session")
def trained_run(tiny_real, tmp_path_factory) -> Path:
    """The suite's one trained model: a run folder (best.pt, last.pt, metrics.jsonl,
    val_predictions.jsonl, report/) from 3 epochs of the tiny convnet at 32 px on 12 + 12 val
    photos, evaluated with TTA at a second size (40 px) too."""
    out = tmp_path_factory.mktemp("trained_run")
    assert train_main(train_args(tiny_real, out, out / "cache", "--epochs", 3, "--report", "--tta-sizes", 40)) == 0
    return out


@pytest.fixture(scope="session")
def trained(trained_run) -> Path:
    """best.pt of the suite's one trained model."""
    return trained_run / "best.pt"


def make_project(root: Path, out: Path, per_class: int, classes=("cat", "dog")) -> Path:
    """A studio project: out/photos/<class>/ with the first `per_class` training photos of each class."""
    for name in classes:
        files = sorted((root / "train" / name).iterdir(), key=lambda p: int(p.name.split(".")[1]))[:per_class]
        (out / "photos" / name).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, out / "photos" / name / f.name)
    (out / "runs").mkdir(exist_ok=True)
    return out


@pytest.fixture(scope="session")
def project(real_data, tmp_path_factory) -> Path:
    """A studio project of 24 photos per class (photos/<class>/, runs/)."""
    return make_project(real_data, tmp_path_factory.mktemp("project"), 24)
