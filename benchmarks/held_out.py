"""Score both recipes on photos no setting was chosen on: another split of the same data.

    python -m benchmarks.held_out --data ../shared/data/catsdogs

The recipes' settings (image size, epochs, weight decay, ...) were chosen by their accuracy on
val/, so val/ may flatter them. This builds another split of the same photos in a temporary
folder (symlinks): every other photo of each class in train/ (sorted by name) is held out, and
the rest of train/ plus all of val/ trains. Then it runs each recipe, `python train.py --data
SPLIT` plus its flags, as a user would, and reports the accuracy on the held-out photos after
the last epoch (the held-out photos are train.py's val here, so best.pt is chosen on them; the
last epoch's number is the one nothing was chosen on). Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import class_tag, cpu_class, train_run, write_section

RECIPES = {  # name: flags after --data
    "from scratch (the default)": [],
    "pretrained (efficientnet_lite0 recipe)": ["--model", "efficientnet_lite0", "--pretrained"],
}


def build_split(data: Path, split: Path) -> dict:
    """Symlink the new split into `split`; returns the number of photos on each side."""
    counts = {"train": 0, "held out": 0}
    for class_dir in sorted(p for p in (data / "train").iterdir() if p.is_dir()):
        for index, photo in enumerate(sorted(class_dir.iterdir())):
            side = "val" if index % 2 == 0 else "train"
            counts["held out" if side == "val" else "train"] += 1
            (split / side / class_dir.name).mkdir(parents=True, exist_ok=True)
            (split / side / class_dir.name / photo.name).symlink_to(photo.resolve())
        for photo in sorted((data / "val" / class_dir.name).iterdir()):
            counts["train"] += 1
            (split / "train" / class_dir.name / f"val-{photo.name}").symlink_to(photo.resolve())
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs",
                        help="dataset with train/ and val/ class folders (default: %(default)s)")
    parser.add_argument("--scratch-args", default="", help="extra flags for the from-scratch recipe, e.g. "
                        "'--time-budget 8.7' for the epochs a slower CPU plans (default: none)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "split"
        counts = build_split(Path(args.data).resolve(), split)
        for index, (name, flags) in enumerate(RECIPES.items()):
            flags = flags or args.scratch_args.split()
            run = train_run(str(split), Path(tmp) / str(index), flags)
            last, best = run["evaluated"][-1], max(run["evaluated"], key=lambda m: m["val_accuracy"])
            rows.append(f"| {name} | `{' '.join(flags) or '(none)'}` | {last['val_accuracy']:.2%} "
                        f"(epoch {last['epoch']}) | {best['val_accuracy']:.2%} (epoch {best['epoch']}) | "
                        f"{run['wall']:.0f} s | {run['log'][-1].get('tflop', float('nan')):.1f} |")
            print(rows[-1], flush=True)
    body = "\n".join([
        f"Split: {counts['held out']} held-out photos (every other photo of each class in train/), "
        f"{counts['train']} training photos (the rest of train/ and all of val/).", "",
        "| recipe | flags | held-out accuracy, last epoch | best epoch (chosen on them) | wall time | TFLOP |",
        "|---|---|---|---|---|---|", *rows,
    ])
    write_section(f"held_out-{class_tag()}", f"Held-out photos: another split of the same data ({cpu_class()})", body)


if __name__ == "__main__":
    main()
