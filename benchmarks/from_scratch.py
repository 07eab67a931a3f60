"""Benchmark the from-scratch recipe: time to accuracy, pipeline throughput, inference speed.

    python -m benchmarks.from_scratch --data ../shared/data/catsdogs
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.from_scratch ...   # the AVX2 class

1. Time to accuracy: the default `python train.py --data DATA`, exactly as a user runs it (fresh
   process, cold decode cache): wall time, the accuracy after the last epoch, when val first
   reached 85% and 90%, and the run's total TFLOP (train.py logs it).
2. Training throughput of the same training step (loop.train_step, the run's own Trainer) fed
   three ways: this project's pipeline (decoded uint8 tensors in memory, batch augmentation), a
   plain tutorial pipeline (ImageFolder + transforms + DataLoader with two workers), and random
   tensors (pure compute).
3. Inference: `predict.py` over the val photos (process start and decoding included), with its
   default TTA and with --no-tta, and one photo from process start.

Writes its section of benchmarks/RESULTS.md, one per CPU class (benchmarks/common.py).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from benchmarks.common import class_tag, cpu_class, rate, run_command, train_run, write_section
from classifier import distributed, train
from classifier.config import TrainConfig
from classifier.data import Batches
from classifier.runtime import resolve_precision


def time_to(evaluated: list[dict], accuracy: float) -> str:
    reached = [m for m in evaluated if m["val_accuracy"] >= accuracy]
    return f"{reached[0]['wall']:.0f} s (epoch {reached[0]['epoch']})" if reached else "not reached"


def recipe_run(data: str, **settings):
    """A run of the recipe (with `settings` on top) set up as train.py sets it up: (run, seconds)."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(data=data, out=out, cache_dir="", device="cpu", **settings).resolved()
        started = time.perf_counter()
        run = train.setup(config, None, distributed.start("cpu"), None)
        return run, time.perf_counter() - started


def plain_trainer(run):
    """The run's trainer without augmentation: batches go in as they are (channels-last)."""
    layout = torch.channels_last if run.config.channels_last else torch.contiguous_format
    return replace(run.trainer, prepare=lambda x, y, generator, size: (x.contiguous(memory_format=layout), y))


def compute_rate(run, seconds: float) -> float:
    """Images/s of the run's training step on random tensors: pure compute."""
    size, batch = run.config.image_size, run.plan.batch_size
    noise = [(run.preprocessing.normalize(torch.rand(batch, 3, size, size)), torch.randint(0, 2, (batch,)))
             for _ in range(4)]
    return rate(plain_trainer(run), noise, seconds)


def throughput(data: str, seconds: float) -> dict:
    """The recipe's training step, fed by this project's pipeline, a tutorial's, and random tensors."""
    run, setup_seconds = recipe_run(data)
    config, plain = run.config, plain_trainer(run)
    results = {"setup_seconds": setup_seconds, "image_size": config.image_size, "batch_size": run.plan.batch_size,
               "precision": resolve_precision(config.precision, torch.device("cpu")), "model": config.model}
    batches = Batches(*run.pipeline.train_inputs, run.plan.batch_size, shuffle=True, drop_last=True,
                      generator=torch.Generator().manual_seed(0))
    results["project"] = rate(run.trainer, batches, seconds, size=config.image_size)  # crops at full size
    results["compute"] = compute_rate(run, seconds)
    tutorial = datasets.ImageFolder(str(Path(data) / "train"), transforms.Compose([
        transforms.Resize((config.image_size, config.image_size)), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(run.preprocessing.mean, run.preprocessing.std)]))
    loader = DataLoader(tutorial, batch_size=run.plan.batch_size, shuffle=True, num_workers=2, persistent_workers=True)
    results["tutorial"] = rate(plain, loader, seconds)
    return results


def inference(data: str, checkpoint: Path) -> dict:
    val = Path(data) / "val"
    count = sum(1 for p in val.rglob("*") if p.is_file())
    folder = {mode: run_command(["predict.py", str(val), "--checkpoint", str(checkpoint), "--json", mode])[0]
              for mode in ("--tta", "--no-tta")}
    single, _ = run_command(["predict.py", str(next(val.rglob("*.jpg"))), "--checkpoint", str(checkpoint)])
    return {"images": count, "folder_seconds": folder, "single_seconds": single}


def report(args, run: dict, speed: dict, rates: dict) -> str:
    evaluated, last = run["evaluated"], run["log"][-1]
    best = max(evaluated, key=lambda m: m["val_accuracy"])
    folder = speed["folder_seconds"]
    return f"""
`python train.py --data DATA {args.train_args}`: {last['epoch']} epochs in **{run['wall']:.0f} s** wall
(process start to exit, decoding and evaluation included), {last.get('tflop', float('nan')):.1f} TFLOP in all.

| | |
|---|---|
| val accuracy after the last epoch | **{evaluated[-1]['val_accuracy']:.2%}** |
| best val accuracy | {best['val_accuracy']:.2%} (epoch {best['epoch']}) |
| time to 85% val | {time_to(evaluated, 0.85)} |
| time to 90% val | {time_to(evaluated, 0.90)} |

Evaluated epochs (val accuracy @ wall seconds since process start):
{' '.join(f"{m['epoch']}:{m['val_accuracy']:.3f}@{m['wall']:.0f}s" for m in evaluated)}

Training throughput, {rates['model']} at {rates['image_size']} px, batch {rates['batch_size']}, {rates['precision']},
the same training step (`loop.train_step`) fed three ways, images/s:

| pipeline | images/s | vs tutorial |
|---|---|---|
| tutorial (ImageFolder + Resize + ToTensor, DataLoader 2 workers) | {rates['tutorial']:.0f} | 1.0x |
| this project (uint8 tensors in memory, batch augmentation) | {rates['project']:.0f} | {rates['project'] / rates['tutorial']:.1f}x |
| pure compute (random tensors) | {rates['compute']:.0f} | {rates['compute'] / rates['tutorial']:.1f}x |

Setting up (finding and decoding 3,000 photos, building the model): {rates['setup_seconds']:.1f} s.
`predict.py` on {speed['images']} val photos, process start and decoding included: {speed['images'] / folder['--tta']:.0f}
images/s with its default TTA, {speed['images'] / folder['--no-tta']:.0f} images/s with `--no-tta`; one photo from
process start {speed['single_seconds']:.1f} s.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="dataset with train/ and val/ (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=30, help="length of each throughput measurement (default: %(default)s)")
    parser.add_argument("--train-args", default="", help="extra flags for train.py, e.g. '--epochs 30' (default: none)")
    args = parser.parse_args()
    data = str(Path(args.data).resolve())
    with tempfile.TemporaryDirectory() as tmp:
        run = train_run(data, Path(tmp) / "run", args.train_args.split())
        speed = inference(data, Path(tmp) / "run" / "best.pt")
    rates = throughput(data, args.seconds)
    write_section(f"from_scratch-{class_tag()}", f"From scratch: the default recipe ({cpu_class()})", report(args, run, speed, rates))


if __name__ == "__main__":
    main()
