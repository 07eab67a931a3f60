"""Benchmark the pretrained recipe: wall time, accuracy counting "neither" as wrong, calibration,
the neither rule, and predict's speed.

    python -m benchmarks.pretrained --data ../shared/data/catsdogs --neither ../shared/data/neither

1. `python train.py --data SPLIT --model efficientnet_lite0 --pretrained` (plus each mode's flags)
   as a user runs it (fresh process, cold decode cache), on two splits: the dataset's own (val/),
   and the held-out split of benchmarks/held_out.py (trained on half of train/ and all of val/,
   scored on the other half of train/: 1,000 photos no setting was chosen on).
2. With the recipe's best.pt: `predict.py --json` over the scored photos (images/s, process start
   and decoding included, and without start-up: time to the first answer subtracted); accuracy by
   argmax and counting a "neither" answer as wrong; the photos flagged neither; ECE before and
   after the temperature on halves of val (fitted on one, measured on the other); the neither photos.
Writes its section of benchmarks/RESULTS.md, one per CPU class.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from benchmarks.common import class_tag, cpu_class, run_command, train_run, write_section
from benchmarks.held_out import build_split
from classifier.calibration import expected_calibration_error, fit_temperature

RECIPE = ["--model", "efficientnet_lite0", "--pretrained"]
MODES = {  # name: flags after RECIPE
    "the recipe": [],
    "with TTA: the mirror image and 320 px for photos the first view leaves unsure": [
        "--tta", "--tta-sizes", "320", "--tta-below", "0.95"],
    "224 px": ["--image-size", "224"],
}


def predict(checkpoint: Path, folder: Path, *flags: str) -> tuple[float, list[dict]]:
    wall, out = run_command(["predict.py", str(folder), "--checkpoint", str(checkpoint), "--json", *flags])
    return wall, [json.loads(line) for line in out.splitlines()]


def scored(results: list[dict]) -> dict:
    """Accuracy by argmax and counting neither as wrong; the photos flagged neither."""
    truth = [Path(r["path"]).parent.name for r in results]
    argmax = [max(r["probabilities"], key=r["probabilities"].get) for r in results]
    flagged = [Path(r["path"]).name for r in results if r.get("neither")]
    return {"argmax": sum(a == t for a, t in zip(argmax, truth)) / len(results),
            "strict": sum(r["label"] == t for r, t in zip(results, truth)) / len(results), "flagged": flagged,
            "wrong": [Path(r["path"]).name for r, t in zip(results, truth) if r["label"] != t]}


def held_out_ece(results: list[dict], classes: list[str], temperature: float) -> tuple[float, float]:
    """ECE before and after a temperature fitted on the other half of the photos (two folds)."""
    probabilities = torch.tensor([[r["probabilities"][c] for c in classes] for r in results]).clamp_min(1e-12)
    logits = probabilities.log() * temperature  # predict divided the logits by the temperature
    labels = torch.tensor([classes.index(Path(r["path"]).parent.name) for r in results])
    folds = torch.arange(len(labels)) % 2 == 0
    before, after = [], []
    for fit, test in ((folds, ~folds), (~folds, folds)):
        t = fit_temperature(logits[fit], labels[fit])
        before.append(expected_calibration_error(logits[test].softmax(1), labels[test]))
        after.append(expected_calibration_error((logits[test] / t).softmax(1), labels[test]))
    return sum(before) / 2, sum(after) / 2


def speed(checkpoint: Path, folder: Path, count: int) -> dict:
    """predict.py's images/s on a folder, with and without its start-up (one photo's run)."""
    wall, results = predict(checkpoint, folder)
    startup, _ = run_command(["predict.py", str(next(folder.rglob("*.jpg"))), "--checkpoint", str(checkpoint)])
    return {"wall": wall, "with_startup": count / wall, "steady": count / max(wall - startup, 1e-9),
            "startup": startup, "results": results}


def row(name: str, flags: list[str], run: dict, scores: dict) -> str:
    return (f"| {name} | `{' '.join(flags) or '(none)'}` | {run['wall']:.0f} s | {run['log'][-1]['tflop']:.1f} | "
            f"{scores['argmax']:.2%} | **{scores['strict']:.2%}** | {len(scores['flagged'])} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="train/ and val/ of cats and dogs (default: %(default)s)")
    parser.add_argument("--neither", default="../shared/data/neither", help="photos of neither class (default: %(default)s)")
    parser.add_argument("--modes", type=int, default=len(MODES), help="how many of the modes to run, the recipe first (default: all)")
    args = parser.parse_args()
    data, rows, notes = Path(args.data).resolve(), [], []
    with tempfile.TemporaryDirectory() as tmp:
        split = Path(tmp) / "split"
        build_split(data, split)
        for index, (name, flags) in enumerate(list(MODES.items())[:args.modes]):
            for where, folder in (("val/", data), ("held out", split)):
                out = Path(tmp) / f"{index}-{where[:4]}"
                run = train_run(str(folder), out, [*RECIPE, *flags])
                measured = speed(out / "best.pt", folder / "val", len(list((folder / "val").rglob("*.*"))))
                scores = scored(measured["results"])
                rows.append(row(f"{name}, {where}", flags, run, scores) + f" {measured['with_startup']:.1f} / "
                            f"{measured['steady']:.1f} |")
                print(rows[-1], flush=True)
                notes.append(f"- {name}, {where}: wrong counting neither as wrong: {', '.join(scores['wrong']) or 'none'}; "
                             f"flagged neither: {', '.join(scores['flagged']) or 'none'}.")
                if index == 0 and where == "val/":
                    recipe, val_results = torch.load(out / "best.pt", weights_only=True), measured["results"]
                    _, neither = predict(out / "best.pt", Path(args.neither).resolve())
    ece = held_out_ece(val_results, recipe["classes"], recipe["temperature"])
    caught = sum(r.get("neither", False) for r in neither)
    body = "\n".join([
        "`python train.py --data SPLIT --model efficientnet_lite0 --pretrained` plus the flags, as a user runs it "
        "(wall time from process start, cold decode cache), then `predict.py --json` on the scored photos "
        "(val/ of the dataset, or the 1,000 held-out photos no setting was chosen on):", "",
        "| mode, scored on | flags | train.py wall | TFLOP | accuracy (argmax) | accuracy counting neither as wrong | "
        "flagged neither | predict images/s (with start-up / without) |", "|---|---|---|---|---|---|---|---|", *rows, "",
        *notes, "",
        f"Neither photos (`{args.neither}`): {caught}/{len(neither)} flagged neither"
        + (f"; not flagged: {', '.join(Path(r['path']).name for r in neither if not r.get('neither'))}" if caught < len(neither) else "")
        + f". Calibration of the recipe's predict output on val/ (temperature fitted on one half, measured on the other): "
          f"ECE {ece[0]:.4f} before, {ece[1]:.4f} after.",
    ])
    write_section(f"pretrained-{class_tag()}", f"Pretrained recipe ({cpu_class()})", body)


if __name__ == "__main__":
    main()
