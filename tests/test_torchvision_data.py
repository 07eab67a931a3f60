"""The data layer as torchvision users know it: ImageFolder semantics, a VisionDataset of the
decoded photos that a DataLoader and transforms.v2 take, and torchvision's own datasets."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from classifier import distributed, downloads, fitting, train
from classifier.config import TrainConfig
from classifier.data import CachedImageFolder, PhotoFolder, find_dataset
from classifier.errors import ClassifierError
from classifier.images import Preprocessing
from conftest import make_image, train_args


def test_a_users_dataloader_gets_the_tensors_and_labels_training_uses(tiny_real, tmp_path):
    dataset = CachedImageFolder(tiny_real, "train", image_size=32, cache_dir=str(tmp_path),
                                transform=v2.ToDtype(torch.float32, scale=True))
    images, labels = map(torch.cat, zip(*DataLoader(dataset, batch_size=5)))
    assert images.shape == (24, 3, 32, 32) and images.dtype == torch.float32
    assert dataset.classes == ["cat", "dog"] and dataset.class_to_idx == {"cat": 0, "dog": 1}
    assert labels.tolist() == [dataset.classes.index(Path(p).parent.name) for p in dataset.paths]
    for image, path in zip(images[::7], dataset.paths[::7]):  # each item is the photo, decoded once
        torch.testing.assert_close(image, Preprocessing(32).decode(path).float() / 255)
    config = TrainConfig.from_dict({**vars(train.parse_args(train_args(tiny_real, tmp_path, tmp_path))),
                                    "augment": False}).resolved()
    used, _ = fitting.load_splits(config, find_dataset(tiny_real), Preprocessing(32), None, distributed.start("cpu"))
    torch.testing.assert_close(images, used.images.float() / 255)
    assert torch.equal(labels, used.targets)


def test_transforms_v2_augment_the_uint8_items_in_a_dataloader(tiny_real, tmp_path):
    augment = v2.Compose([v2.RandomResizedCrop(24, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip(),
                          v2.ToDtype(torch.float32, scale=True)])
    dataset = CachedImageFolder(tiny_real, "val", image_size=32, cache_dir=str(tmp_path), transform=augment,
                                target_transform=lambda label: label * 10)
    images, labels = next(iter(DataLoader(dataset, batch_size=12, shuffle=True,
                                          generator=torch.Generator().manual_seed(0))))
    assert images.shape == (12, 3, 24, 24) and 0 <= images.min() and images.max() <= 1
    assert set(labels.tolist()) <= {0, 10}


def test_photo_folder_lists_what_imagefolder_lists(tiny_real):
    ours, theirs = PhotoFolder(tiny_real / "train"), torchvision.datasets.ImageFolder(str(tiny_real / "train"))
    assert ours.classes == theirs.classes and ours.class_to_idx == theirs.class_to_idx
    assert ours.samples == theirs.samples and ours.targets == theirs.targets
    image, label = ours[0]
    assert image.mode == "RGB" and image.size == theirs[0][0].size and label == theirs[0][1]


def test_photo_folder_passes_over_hidden_folders_and_link_loops_that_imagefolder_would_not(tmp_path):
    for name in ("cat", "dog"):
        make_image(tmp_path / name / "a.jpg")
    make_image(tmp_path / ".ipynb_checkpoints" / "a.jpg")  # ImageFolder: a third class
    os.symlink(tmp_path / "cat", tmp_path / "cat" / "loop")  # ImageFolder: walks it forever
    assert torchvision.datasets.ImageFolder(str(tmp_path), is_valid_file=lambda p: "loop" not in p).classes \
        == [".ipynb_checkpoints", "cat", "dog"]
    folder = PhotoFolder(tmp_path)
    assert folder.classes == ["cat", "dog"] and [Path(p).name for p, _ in folder.samples] == ["a.jpg", "a.jpg"]


class FakeCIFAR:
    """torchvision.datasets.CIFAR10 as the conversion sees it, without the download."""

    classes = ["airplane", "cat"]
    made = []

    def __init__(self, root, train=True, download=False):
        FakeCIFAR.made.append(train)
        count = 4 if train else 2
        self.data = np.random.default_rng(int(train)).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
        self.targets = [i % 2 for i in range(count)]


def test_a_torchvision_dataset_is_written_out_once_as_image_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR)
    monkeypatch.setattr(downloads, "DATA_ROOT", tmp_path)
    FakeCIFAR.made.clear()
    dataset = find_dataset("torchvision:CIFAR10")
    assert dataset.classes == ["airplane", "cat"] and len(dataset.train) == 4 and len(dataset.val) == 2
    first = Path(dataset.train.paths[0])
    assert first.is_relative_to(tmp_path / "cifar10" / "train") and first.suffix == ".png"
    assert torch.equal(Preprocessing(32).decode(first), torch.from_numpy(FakeCIFAR(None).data[0]).permute(2, 0, 1))
    assert find_dataset("torchvision:CIFAR10").train.paths == dataset.train.paths
    assert FakeCIFAR.made == [True, False, True]  # the second run read the folders, not the dataset


def test_a_torchvision_dataset_offline_is_one_line(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    monkeypatch.setattr(downloads, "DATA_ROOT", tmp_path)
    with pytest.raises(ClassifierError) as error:
        find_dataset("torchvision:CIFAR10")
    assert "could not download CIFAR10" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ClassifierError, match="torchvision:OxfordIIITPet"):
        find_dataset("torchvision:ImageNet")
