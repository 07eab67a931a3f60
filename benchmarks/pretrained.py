"""Benchmark the pretrained-backbone recipes: accuracy, wall time, calibration, neither, predict speed.

    python benchmarks/pretrained.py --data ../shared/data/catsdogs --neither ../shared/data/neither

For each training mode, runs `python train.py --data DATA --model efficientnet_lite0 --pretrained`
plus that mode's flags, exactly as a user would (fresh process, empty decode cache), and
records val accuracy and the wall time of the whole command. Then, with the recipe's best.pt:
`predict.py --json` over the val photos, with its default TTA (the checkpoint's) and with
--no-tta (images/s, decode included), and the neither photos;
ECE before and after the temperature, each measured on the half of val the temperature was
not fitted on (two folds, averaged); how many neither photos are flagged and how many val
photos are wrongly flagged. Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from classifier.calibration import IMAGENET_TOP, expected_calibration_error, fit_temperature  # noqa: E402
from classifier.checkpoint import load_checkpoint  # noqa: E402
from results import write_section  # noqa: E402

MODES = {  # name: extra flags after --model efficientnet_lite0 --pretrained
    "recipe (defaults)": [],
    "recipe without the 320 px test-time size": ["--tta-sizes", ""],
    "linear probe, 224 px, no augmentation, no TTA": ["--finetune", "probe", "--views", "1", "--no-tta",
                                                      "--image-size", "224"],
    "last 2 stages on cached activations, 272 px, 3 epochs": ["--finetune", "last", "--finetune-stages", "2",
                                                              "--epochs", "3", "--lr", "3e-4"],
    "full fine-tuning, 128 px, 2 epochs": ["--finetune", "full", "--image-size", "128", "--epochs", "2",
                                           "--lr", "0.002", "--backbone-lr", "0.1", "--views", "1"],
}


def timed_run(command: list[str], **kwargs) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True, **kwargs)
    return time.perf_counter() - started, result.stdout


def train(data: str, out: Path, extra: list[str]) -> dict:
    load = os.getloadavg()[0]
    wall, _ = timed_run([sys.executable, "train.py", "--data", data, "--out", str(out), "--cache-dir",
                         str(out / "cache"), "--model", "efficientnet_lite0", "--pretrained", *extra])
    best = load_checkpoint(out / "best.pt")
    return {"wall": wall, "load": (load + os.getloadavg()[0]) / 2, "accuracy": best["metrics"]["val_accuracy"],
            "epoch": best["epoch"], "temperature": best["temperature"]}


def predict(checkpoint: Path, folder: str, *extra: str) -> tuple[float, list[dict]]:
    wall, out = timed_run([sys.executable, "predict.py", folder, "--checkpoint", str(checkpoint), "--json", *extra])
    return wall, [json.loads(line) for line in out.splitlines()]


def held_out_ece(results: list[dict], classes: list[str], temperature: float) -> tuple[float, float]:
    """ECE before and after a temperature fitted on the other half of val (two folds)."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("CATSDOGS_DATA", "../shared/data/catsdogs"),
                        help="train/ and val/ of cat and dog photos (default: %(default)s)")
    parser.add_argument("--neither", default="../shared/data/neither", help="photos of neither class (default: %(default)s)")
    parser.add_argument("--modes", default=",".join(str(i) for i in range(len(MODES))),
                        help="which training modes to run, comma-separated indices (default: all)")
    args = parser.parse_args()
    rows, names = [], list(MODES)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for index in map(int, args.modes.split(",")):
            name = names[index]
            runs[name] = train(args.data, Path(tmp) / str(index), MODES[name])
            r = runs[name]
            flags = " ".join(MODES[name]) or "(none)"
            rows.append(f"| {name} | `{flags}` | {r['accuracy']:.2%} (epoch {r['epoch']}) | {r['wall']:.0f} s | {r['load']:.1f} |")
            print(rows[-1], flush=True)
        recipe = Path(tmp) / "0" / "best.pt"
        checkpoint = load_checkpoint(recipe)
        wall, val = predict(recipe, str(Path(args.data) / "val"), "--no-tta")
        wall_tta, val_tta = predict(recipe, str(Path(args.data) / "val"))
        _, neither = predict(recipe, args.neither)
    classes = checkpoint["classes"]
    ece_before, ece_after = held_out_ece(val, classes, checkpoint["temperature"])
    ece_tta = held_out_ece(val_tta, classes, checkpoint["temperature"])
    accuracy = lambda results: sum(r["label"] == Path(r["path"]).parent.name or
                                   max(r["probabilities"], key=r["probabilities"].get) == Path(r["path"]).parent.name
                                   for r in results) / len(results)
    flagged_val = sum(r.get("neither", False) for r in val_tta)
    flagged = sum(r.get("neither", False) for r in neither)
    calibration = checkpoint["calibration"]
    body = "\n".join([
        "Training, `python train.py --data DATA --model efficientnet_lite0 --pretrained` plus the flags "
        "(wall time of the whole command, cold decode cache; val accuracy of best.pt, with the "
        "recipe's TTA where it is on):", "",
        "| mode | flags | val accuracy | wall time | load |", "|---|---|---|---|---|", *rows, "",
        f"Recipe's best.pt through `predict.py --json` (decode included, {len(val)} val photos): "
        f"{len(val) / wall:.1f} images/s with `--no-tta` (process start included), accuracy "
        f"{accuracy(val):.2%}; with its default TTA (mirror image, and test-time sizes "
        f"{list(checkpoint['preprocessing'].get('tta_sizes', ()))}): {len(val_tta) / wall_tta:.1f} images/s, "
        f"accuracy {accuracy(val_tta):.2%}.", "",
        f"Calibration: training fitted temperature {checkpoint['temperature']:.3f} on val (with the "
        f"recipe's TTA): ECE {calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} on the same "
        f"photos; held out (predict's output with `--no-tta`, temperature fitted on one half of val and "
        f"measured on the other, two folds): {ece_before:.4f} -> {ece_after:.4f}; the same with TTA: "
        f"{ece_tta[0]:.4f} -> {ece_tta[1]:.4f}.", "",
        f"Neither (ImageNet head: no cat or dog class among its {IMAGENET_TOP} most likely guesses): "
        f"{flagged}/{len(neither)} neither photos flagged; {flagged_val}/{len(val)} val photos "
        f"wrongly flagged (predict's default TTA). Not flagged: "
        + (", ".join(f"{Path(r['path']).name} ({r['known_score']:.2f})" for r in neither if not r.get("neither"))
           or "none") + ".",
    ])
    write_section("pretrained", "Pretrained backbones (benchmarks/pretrained.py)", body)


if __name__ == "__main__":
    main()
