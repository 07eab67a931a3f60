"""Folders of a dozen photos a class: a sensible split, classes of different sizes, enough steps,
and an accuracy estimate by cross-validation."""

import json

import pytest
import torch

from classifier.checkpoint import load_checkpoint
from classifier.config import TrainConfig
from classifier.data import stratified_folds
from classifier.fitting import class_weights
from conftest import copy_subset, train_args, train_main


@pytest.fixture
def breeds(tiny_real, tmp_path):
    """class folders with no split: 12 cats, 12 dogs, and 4 dogs of another kind (3:1)."""
    folder = copy_subset(tiny_real, tmp_path / "raw", {"train": 12})
    root = tmp_path / "folder"
    root.mkdir()
    for name in ("cat", "dog"):
        (folder / "train" / name).rename(root / name)
    (root / "puppy").mkdir()
    for photo in sorted((root / "dog").iterdir())[:4]:
        photo.rename(root / "puppy" / photo.name)
    return root


def test_classes_of_different_sizes_weigh_alike_in_the_loss():
    labels = torch.tensor([0] * 30 + [1] * 10 + [2] * 20)
    weights = class_weights(labels, 3, balance=True)
    counts = torch.bincount(labels).float()
    assert torch.allclose(weights * counts, torch.full((3,), 20.0))  # each class's total weight alike
    assert class_weights(labels, 3, balance=False) is None
    assert class_weights(torch.tensor([0] * 10 + [1] * 12), 2, balance=True) is None  # nearly even: as is


def test_folds_spread_every_class_evenly():
    labels = torch.tensor([0] * 10 + [1] * 5)
    fold_of = stratified_folds(labels, 5, seed=0)
    for fold in range(5):
        assert (labels[fold_of == fold] == 0).sum() == 2 and (labels[fold_of == fold] == 1).sum() == 1


def test_explicit_epochs_are_kept_exactly_and_the_recipe_adds_steps_to_small_folders():
    assert TrainConfig(model="efficientnet_lite0", pretrained=True).resolved().min_steps == 300
    assert TrainConfig(model="efficientnet_lite0", pretrained=True, epochs=3).resolved().min_steps == 0
    assert TrainConfig().resolved().min_steps == 0  # the from-scratch recipe counts epochs


def test_a_small_folder_is_split_weighed_and_cross_validated(breeds, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(train_args(breeds, out, tmp_path / "cache", "--epochs", 2, "--folds", 3)) == 0
    printed = capsys.readouterr().out
    assert "classes differ in size (cat 10, dog 6, puppy 3; 3:1): the loss weighs every class alike" in printed
    assert "warning: fewer than 10 val photos of cat, dog, puppy" in printed
    estimate = json.loads((out / "cross_validation.json").read_text())
    assert estimate["folds"] == 3 and estimate["photos"] == 24 and len(estimate["per_fold"]) == 3
    assert set(estimate["per_class"]) == {"cat", "dog", "puppy"} and 0 <= estimate["accuracy"] <= 1
    assert f"3-fold cross-validation over 24 photos: accuracy {estimate['accuracy']:.1%}" in printed
    best = load_checkpoint(out / "best.pt")
    assert best["cross_validation"] == estimate and set(best["metrics"]["val_per_class"]) == {"cat", "dog", "puppy"}
    assert "per class: cat" in printed


def test_min_steps_gives_a_small_folder_more_passes_an_epoch(breeds, tmp_path, capsys):
    out = tmp_path / "run"
    assert train_main(train_args(breeds, out, tmp_path / "cache", "--epochs", 2, "--min-steps", 6, "--folds", 0)) == 0
    assert "1 step(s) a pass over the training photos: 3 passes an epoch, 6 steps for at least 6 (--min-steps)" \
        in capsys.readouterr().out
    plan = load_checkpoint(out / "last.pt")["plan"]
    assert (plan["epochs"], plan["passes"], plan["steps_per_epoch"]) == (2, 3, 3)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # an epoch record each, not one a step
    assert not (out / "cross_validation.json").exists()
