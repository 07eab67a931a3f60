"""A recipe over several seeds, as a user runs it: mean and spread on photos no setting was chosen on.

    python -m benchmarks.seeds --data ../shared/data/catsdogs
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.seeds --train-args '--time-budget 6.0'
    python -m benchmarks.seeds --recipe pretrained

Each seed is `python train.py --data DATA --seed S` plus the recipe's flags (none from scratch;
`--model efficientnet_lite0 --pretrained`) and --train-args (nothing else: the recipe and its time
budget decide the rest), fresh process, cold decode cache. The score is the accuracy after
the last epoch (best.pt is chosen on the scored photos, so the best epoch would flatter it).
Which photos no setting was chosen on depends on the recipe, so --split does too:
- from scratch, --split held_out (its default): held_out.py's split, every other photo of train/
  held out, training on the rest and val/. The recipe's settings were first chosen on val/; a later
  re-check on splits of train/ alone (crop scale, cutmix, resolution, weight decay, label smoothing)
  kept every one of them (RESULTS.md, "From-scratch recipe: the re-check on splits of train/
  alone"), so no setting was chosen on the held-out photos.
- pretrained, --split val (its default): train/ -> val/. Its settings were chosen by
  cross-validation on train/ (RESULTS.md, "Pretrained probe"), and its probe's strength is chosen
  by cross-validation on the training photos, so val/ is untouched there.
Writes its section of RESULTS.md, one per recipe, CPU class and split.
"""

from __future__ import annotations

import argparse
import re
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import class_tag, cpu_class, train_run, write_section
from benchmarks.held_out import build_split

RECIPES = {"scratch": [], "pretrained": ["--model", "efficientnet_lite0", "--pretrained"]}
PLAN = re.compile(r"time budget .*?: ([\d.]+) s an epoch .*?: (\d+) of at most (\d+) epochs")


def seed_run(data: str, out: Path, seed: int, flags: list[str]) -> dict:
    """One seed: the last epoch's val accuracy, wall time and the epochs planned (by the time budget, if one)."""
    run = train_run(data, out, ["--seed", str(seed), *flags])
    plan = PLAN.search(run["stdout"])
    last = run["evaluated"][-1]
    return {"seed": seed, "accuracy": last["val_accuracy"], "epochs": last["epoch"], "wall": run["wall"],
            "epoch_seconds": float(plan.group(1)) if plan else None, "at_most": int(plan.group(3)) if plan else None,
            "best": max(m["val_accuracy"] for m in run["evaluated"])}


def summary(runs: list[dict]) -> str:
    scores = [r["accuracy"] for r in runs]
    spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
    return (f"mean **{statistics.mean(scores):.2%}** over {len(scores)} seeds (min {min(scores):.2%}, max "
            f"{max(scores):.2%}, standard deviation {spread:.2%}); wall time {min(r['wall'] for r in runs):.0f}-"
            f"{max(r['wall'] for r in runs):.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="dataset with train/ and val/ (default: %(default)s)")
    parser.add_argument("--recipe", choices=tuple(RECIPES), default="scratch",
                        help="from scratch (train.py's default) or the pretrained recipe (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default: %(default)s)")
    parser.add_argument("--train-args", default="", help="extra flags for train.py, e.g. '--time-budget 6.0' under the "
                        "AVX2 emulation for a Zen 3's 14 minutes: 14 x the Zen 3 / here ratio of benchmarks.emulation "
                        "(0.43 on a Zen 5: 6.0; 0.61 on a Xeon with AMX: 8.4) (default: none)")
    parser.add_argument("--split", choices=("held_out", "val"), default=None,
                        help="score held_out.py's held-out half of train/, or val/ (default: the recipe's untouched "
                        "photos: held_out from scratch, val pretrained)")
    args = parser.parse_args()
    args.split = args.split or {"scratch": "held_out", "pretrained": "val"}[args.recipe]
    flags, rows, runs = [*RECIPES[args.recipe], *args.train_args.split()], [], []
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(args.data).resolve()
        if args.split == "held_out":
            build_split(data, Path(tmp) / "split")
            data = Path(tmp) / "split"
        for seed in [int(s) for s in args.seeds.split(",")]:
            run = seed_run(str(data), Path(tmp) / f"seed{seed}", seed, flags)
            runs.append(run)
            planned = f"{run['epochs']} of at most {run['at_most']}" if run["at_most"] else str(run["epochs"])
            rows.append(f"| {seed} | **{run['accuracy']:.2%}** | {run['best']:.2%} | {planned} | "
                        f"{run['epoch_seconds'] or '-'} | {run['wall']:.0f} s |")
            print(rows[-1], flush=True)
    scored = "val/ (1,000 photos)" if args.split == "val" else "held_out.py's 1,000 held-out photos"
    body = "\n".join([
        f"`python train.py --data DATA --seed S {' '.join(flags)}`, scored on {scored} after the last epoch: "
        f"{summary(runs)}.", "",
        "| seed | accuracy, last epoch | best evaluated epoch (chosen on these photos) | epochs planned | "
        "seconds an epoch (the plan's estimate) | wall time |",
        "|---|---|---|---|---|---|", *rows,
    ])
    title = {"scratch": "From scratch", "pretrained": "Pretrained recipe"}[args.recipe]
    write_section(f"seeds-{args.recipe}-{class_tag()}-{args.split}",
                  f"{title} over {len(runs)} seeds, {scored} ({cpu_class()})", body)


if __name__ == "__main__":
    main()
