"""Would choosing the probe's resize per folder, by cross-validation on its training photos, help?

    python -m benchmarks.resize_cv --data ../shared/data/catsdogs --neither-set data/neither_extra

For each of benchmarks/own_classes.py's split folders (emoji proxy and noisy catsdogs, two draws
each; catsdogs train/ -> val/), the recipe's own probe (probe.py: L2 strength by 3 x 5-fold
cross-validation, refit) is fitted on the frozen features at each resize of own_classes.RESIZES and
on both concatenated. For each: its out-of-fold accuracy on the training photos (what a per-folder
choice would see) and its accuracy on the folder's test photos (what the user gets). The choice
by out-of-fold accuracy (of equals, lower out-of-fold log-loss) is then scored on the test photos
against always using the recipe's 272 px center crop. Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cpu_class, write_section
from benchmarks.own_classes import RESIZES, SEEDS, emoji_folder, features, noisy_folder
from classifier.data import find_dataset
from classifier.models import create_model
from classifier.probe import best_strength, cross_validate, fit_probe, l2_of

BOTH = "both concatenated"


def scored(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
           classes: int) -> dict:
    """The cross-validated probe's out-of-fold accuracy and log-loss, and its test accuracy."""
    chosen = best_strength(cross_validate(train_x, train_y, classes))
    probe = fit_probe(train_x, train_y, classes, l2_of(chosen["strength"], len(train_y)))
    test = float((probe.logits(test_x).argmax(1) == test_y).double().mean())
    return {"oof": chosen["accuracy"], "oof_loss": chosen["loss"], "test": test}


def folder_scores(network, folder: Path) -> dict[str, dict]:
    """scored() for each resize and for both concatenated."""
    dataset = find_dataset(folder)
    train_y, test_y = torch.tensor(dataset.train.labels), torch.tensor(dataset.val.labels)
    inputs = {name: [torch.from_numpy(features(network, split.paths, size, at)) for split in (dataset.train, dataset.val)]
              for name, (size, at) in RESIZES.items()}
    inputs[BOTH] = [torch.cat([inputs[name][side] for name in RESIZES], 1) for side in (0, 1)]
    return {name: scored(x, train_y, test_x, test_y, len(dataset.classes)) for name, (x, test_x) in inputs.items()}


def chosen_by_cv(scores: dict[str, dict], candidates: list[str]) -> str:
    return min(candidates, key=lambda name: (-scores[name]["oof"], scores[name]["oof_loss"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="cats and dogs, train/ and val/ (default: %(default)s)")
    parser.add_argument("--neither-set", default="data/neither_extra", help="benchmarks/neither_set.py's folder (default: %(default)s)")
    args = parser.parse_args()
    data, neither_set = Path(args.data).resolve(), Path(args.neither_set).resolve()
    network = create_model("efficientnet_lite0", 2, pretrained=True, finetune="probe")
    names, fixed = [*RESIZES, BOTH], next(iter(RESIZES))
    rows, totals = [], {"fixed": [], "resize": [], "any": []}
    with tempfile.TemporaryDirectory() as tmp:
        folders = {f"emoji, draw {s}": emoji_folder(neither_set, Path(tmp) / f"emoji{s}", s) for s in SEEDS}
        folders.update({f"noisy catsdogs, draw {s}": noisy_folder(data, Path(tmp) / f"noisy{s}", s) for s in SEEDS})
        folders["catsdogs"] = data
        for label, folder in folders.items():
            scores = folder_scores(network, folder)
            by_resize, by_any = chosen_by_cv(scores, list(RESIZES)), chosen_by_cv(scores, names)
            for key, name in (("fixed", fixed), ("resize", by_resize), ("any", by_any)):
                totals[key].append(scores[name]["test"])
            cells = " | ".join(f"{scores[n]['oof']:.1%} / {scores[n]['test']:.1%}" for n in names)
            rows.append(f"| {label} | {cells} | {by_resize.split(' (')[0]}: {scores[by_resize]['test']:.1%} | "
                        f"{by_any.split(' (')[0]}: {scores[by_any]['test']:.1%} |")
            print(rows[-1], flush=True)
    body = "\n".join([
        "The recipe's probe (probe.py) on each folder's frozen features at each resize and at both concatenated: "
        "out-of-fold accuracy on the training photos (3 x 5-fold, what a per-folder choice sees) / accuracy on "
        "the folder's test photos; then the test accuracy of the choice by out-of-fold accuracy among the two "
        "resizes, and among all three.", "",
        "| folder | " + " | ".join(names) + " | chosen among the resizes | chosen among all three |",
        "|---|" + "---|" * (len(names) + 2), *rows, "",
        f"Mean test accuracy over the {len(rows)} folders: always the 272 px crop **{np.mean(totals['fixed']):.2%}**, "
        f"chosen among the resizes **{np.mean(totals['resize']):.2%}**, chosen among all three "
        f"**{np.mean(totals['any']):.2%}**."])
    write_section("resize_cv", f"Your own classes: the probe's resize chosen per folder ({cpu_class()})", body)


if __name__ == "__main__":
    main()
