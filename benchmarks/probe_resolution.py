"""Choose the efficientnet_lite0 probe's resolution by cross-validation on train/ alone.

    python benchmarks/probe_resolution.py --data ../shared/data/catsdogs

For each size: the frozen network runs once over the training photos (the photo and its
mirror image, as the recipe caches them), then the recipe's linear probe (AdamW, lr 1e-3,
weight decay 0.05, 10 epochs) is trained on all folds but one and scored on the held-out
fold, averaging each photo with its mirror image (the recipe's TTA). Then, for each pair of
sizes, the probe trained at the smaller one is scored with test-time sizes: its logits at
both sizes averaged (--tta-sizes). val/ is never read. Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from classifier.data import Preprocessing, decode_images, find_dataset  # noqa: E402
from classifier.models import create_model, model_entry  # noqa: E402
from classifier.transfer import cached_features, tail_logits  # noqa: E402
from results import write_section  # noqa: E402
from tune_pretrained import train_tail  # noqa: E402


def cross_validate(features: torch.Tensor, labels: torch.Tensor, folds: int,
                   test_sizes: list[torch.Tensor] = (), epochs: int = 10, lr: float = 1e-3, **settings) -> list[int]:
    """Errors on each held-out fold of a probe trained on the other folds (the recipe's
    settings unless given; see train_tail); scored on `features`, and on the same photos'
    `test_sizes` features too, averaged."""
    fold_of = torch.arange(len(labels)) % folds
    errors = []
    for fold in range(folds):
        fit, held = fold_of != fold, fold_of == fold
        model = create_model("efficientnet_lite0", pretrained=True, finetune="probe")
        views = features[fit].shape[1]
        train_tail(model, features[fit].flatten(0, 1), labels[fit].repeat_interleave(views), epochs, lr, **settings)
        model.eval()
        with torch.inference_mode():
            logits = tail_logits(model)([features[held]] + [f[held] for f in test_sizes])
            errors.append(int((logits.argmax(1) != labels[held]).sum()))
    return errors


def train_features(network, train, size: int):
    """The frozen network's output for each training photo and its mirror image, at `size` px
    (center crops, as the recipe caches them)."""
    preprocessing = Preprocessing(size, **model_entry("efficientnet_lite0").preprocessing)
    decoded = decode_images(train.paths, train.labels, preprocessing, cache_dir=None)
    return cached_features(network, decoded, preprocessing, torch.device("cpu"), views=2, flip=True,
                           precision="auto", desc=f"{size} px")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="its train/ is used, val/ never (default: %(default)s)")
    parser.add_argument("--sizes", default="224,272,320", help="image sizes to compare (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=4, help="cross-validation folds (default: %(default)s)")
    args = parser.parse_args()
    dataset = find_dataset(args.data)
    train = dataset.train
    train_labels = torch.tensor(train.labels)  # of the photos that decode: set again below

    def row(name: str, errors: list[int], seconds: str) -> str:
        accuracy = 1 - sum(errors) / len(train_labels)
        print(f"{name} px: {accuracy:.2%} ({sum(errors)} errors; per fold {errors})", flush=True)
        return f"| {name} | {accuracy:.2%} | {sum(errors)} | {', '.join(map(str, errors))} | {seconds} |"
    network = create_model("efficientnet_lite0", pretrained=True, finetune="probe")
    rows, features_at = [], {}
    for size in map(int, args.sizes.split(",")):
        started = time.perf_counter()
        features = train_features(network, train, size)
        seconds = time.perf_counter() - started
        features_at[size], train_labels = features.images, features.labels
        rows.append(row(f"{size}", cross_validate(features.images, train_labels, args.folds), f"{seconds:.0f} s"))
    for size in features_at:
        for test_size in (s for s in features_at if s > size):
            errors = cross_validate(features_at[size], train_labels, args.folds, [features_at[test_size]])
            rows.append(row(f"{size}, test-time size {test_size}", errors, "-"))
    body = (f"{len(train.paths)} photos of train/, {args.folds}-fold cross-validation, val/ not used:\n\n"
            "| image size | accuracy | errors | per fold | decode + features (2 views) |\n"
            "|---|---|---|---|---|\n" + "\n".join(rows))
    write_section("probe_resolution", "Pretrained probe: resolution by cross-validation on train/", body)


if __name__ == "__main__":
    main()
