"""Small custom folders: the pretrained recipe on a dozen photos a class, and on classes of
very different sizes, measured by cross-validation and per-class accuracy.

    python -m benchmarks.small_folders --breeds ../shared/data/dogbreeds --data ../shared/data/catsdogs

1. ../shared/data/dogbreeds (146 photos, 10 breeds, no split): `train.py --data BREEDS --model
   efficientnet_lite0 --pretrained` plus each variant's flags, with 5-fold cross-validation
   (`--folds 5`, train.py's own estimate: every photo scored once by a model that did not train
   on it): out-of-fold accuracy, its spread over the folds, the worst class, wall time.
2. A folder with one class 10x smaller than the other, built from catsdogs (train: 400 cats,
   40 dogs; val: 200 of each, untouched): val accuracy of each class with the loss balanced
   (the default) and without (--no-balance).
Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchmarks.common import cpu_class, train_run, write_section

PRETRAINED = ["--model", "efficientnet_lite0", "--pretrained"]
VARIANTS = {  # name: flags after --pretrained
    "the recipe": [],
    "no extra steps (--min-steps 0: 10 epochs, 30 steps)": ["--min-steps", "0"],
    "more steps (--min-steps 1000)": ["--min-steps", "1000"],
    "mirror views in training too (--views 2)": ["--views", "2"],
    "224 px": ["--image-size", "224"],
}


def breeds(folder: str, tmp: Path) -> list[str]:
    rows = []
    for index, (name, flags) in enumerate(VARIANTS.items()):
        run = train_run(folder, tmp / f"breeds{index}", [*PRETRAINED, "--folds", "5", *flags])
        estimate = json.loads((tmp / f"breeds{index}" / "cross_validation.json").read_text())
        worst = min(estimate["per_class"], key=estimate["per_class"].get)
        rows.append(f"| {name} | `{' '.join(flags) or '(none)'}` | {estimate['accuracy']:.1%} | "
                    f"{min(estimate['per_fold']):.0%}-{max(estimate['per_fold']):.0%} | {worst} "
                    f"{estimate['per_class'][worst]:.0%} | {run['wall']:.0f} s |")
        print(rows[-1], flush=True)
    return rows


def imbalanced_folder(data: Path, out: Path, cats: int = 400, dogs: int = 40, val: int = 200) -> Path:
    """Symlinks: train/cat (cats), train/dog (dogs), val/{cat,dog} (val of each)."""
    for split, counts in (("train", {"cat": cats, "dog": dogs}), ("val", {"cat": val, "dog": val})):
        for name, count in counts.items():
            (out / split / name).mkdir(parents=True)
            for photo in sorted((data / split / name).iterdir())[:count]:
                (out / split / name / photo.name).symlink_to(photo.resolve())
    return out


def imbalance(data: str, tmp: Path) -> list[str]:
    folder = imbalanced_folder(Path(data), tmp / "imbalanced")
    rows = []
    for name, flags in (("balanced loss (the default)", []), ("every photo alike (--no-balance)", ["--no-balance"])):
        run = train_run(str(folder), tmp / name.split()[0], [*PRETRAINED, *flags])
        per_class = run["best"]["metrics"]["val_per_class"]
        last = run["evaluated"][-1]
        rows.append(f"| {name} | {last['val_accuracy']:.1%} | {per_class['cat']:.1%} | {per_class['dog']:.1%} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--breeds", default="../shared/data/dogbreeds", help="a small folder of classes (default: %(default)s)")
    parser.add_argument("--data", default="../shared/data/catsdogs", help="catsdogs, for the imbalanced folder (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        breed_rows = breeds(str(Path(args.breeds).resolve()), Path(tmp))
        imbalance_rows = imbalance(str(Path(args.data).resolve()), Path(tmp))
    body = "\n".join([
        f"**{args.breeds}** (146 photos, 10 breeds, no split), `train.py --data BREEDS --model efficientnet_lite0 "
        "--pretrained --folds 5` plus the flags: 5-fold cross-validation over all photos (train.py's estimate).", "",
        "| variant | flags | out-of-fold accuracy | folds | worst class | wall time (CV and the final run) |",
        "|---|---|---|---|---|---|", *breed_rows, "",
        "**One class 10x smaller**: train/ 400 cats and 40 dogs, val/ 200 of each (from catsdogs), "
        "`train.py --model efficientnet_lite0 --pretrained`:", "",
        "| loss | val accuracy (last epoch) | cats (best.pt) | dogs (best.pt) |", "|---|---|---|---|", *imbalance_rows,
    ])
    write_section("small_folders", f"Small custom folders (dogbreeds, and a 10:1 imbalance; {cpu_class()})", body)


if __name__ == "__main__":
    main()
