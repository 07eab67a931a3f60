"""Check the efficientnet_lite0 probe's training settings by cross-validation on train/ alone.

    python benchmarks/probe_settings.py --data ../shared/data/catsdogs

Runs the frozen network once over the training photos at 272 px (the recipe's size) and at
320 px (its test-time size), then, for every combination of epochs, learning rate, weight
decay and label smoothing in the grid, counts the 4-fold cross-validation errors of the
probe scored at 272 px alone and at 272 + 320 px averaged (each with the mirror image).
val/ is never read. Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from classifier.data import find_dataset  # noqa: E402
from classifier.models import create_model  # noqa: E402
from probe_resolution import cross_validate, train_features  # noqa: E402
from results import write_section  # noqa: E402

GRID = {"epochs": (10, 30), "lr": (3e-4, 1e-3, 3e-3), "weight_decay": (0.0, 0.05, 0.5), "label_smoothing": (0.0, 0.1)}
RECIPE = {"epochs": 10, "lr": 1e-3, "weight_decay": 0.05, "label_smoothing": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="its train/ is used, val/ never (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=4, help="cross-validation folds (default: %(default)s)")
    args = parser.parse_args()
    train = find_dataset(args.data).train
    network = create_model("efficientnet_lite0", pretrained=True, finetune="probe")
    at_272, at_320 = train_features(network, train, 272), train_features(network, train, 320)
    labels = at_272.labels
    for features in (at_272, at_320):  # the probe averages each map first: do it once (81x less work)
        features.images = features.images.float().mean((-2, -1), keepdim=True)
    rows = []
    for values in itertools.product(*GRID.values()):
        settings = dict(zip(GRID, values))
        alone = sum(cross_validate(at_272.images, labels, args.folds, **settings))
        both = sum(cross_validate(at_272.images, labels, args.folds, [at_320.images], **settings))
        mark = " (the recipe)" if settings == RECIPE else ""
        rows.append(f"| {' | '.join(map(str, values))}{mark} | {alone} | {both} |")
        print(rows[-1], flush=True)
    body = "\n".join([
        f"{len(labels)} photos of train/, {args.folds}-fold cross-validation errors, val/ not used:", "",
        f"| {' | '.join(GRID)} | errors, 272 px | errors, 272 + 320 px |", "|---|---|---|---|---|---|", *rows,
    ])
    write_section("probe_settings", "Pretrained probe: training settings by cross-validation on train/", body)


if __name__ == "__main__":
    main()
