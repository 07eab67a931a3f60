"""Benchmark the from-scratch recipe: time to accuracy, pipeline throughput, inference speed.

    python benchmarks/from_scratch.py --data ../shared/data/catsdogs

1. Time to accuracy: runs the default `python train.py --data DATA` exactly as a user would
   (fresh process, empty decode cache) and reads the wall time at which val accuracy first
   reached 85% and 90% (at the evaluated epochs, see --eval-every).
2. Training throughput, same model and resolution, three ways: a plain tutorial pipeline
   (ImageFolder + Resize + flip + ToTensor + DataLoader with one worker per core), this
   project's pipeline (decoded uint8 tensors in memory + batch augmentation), and pure
   compute (the model fed random tensors).
3. Inference: `predict.py` over the 1,000 val photos (decode included), with its default TTA and
   with --no-tta, and one photo from process start.

Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from classifier.data import Augmentation, Batches, augment, decode_images, find_dataset  # noqa: E402
from classifier.runtime import autocast, memory_format, resolve_precision  # noqa: E402
from classifier.train import TrainConfig, build_model, compute_loss, make_optimizer  # noqa: E402
from results import write_section  # noqa: E402


def run_recipe(data: str, out: Path, extra: list[str]) -> tuple[float, list[dict]]:
    """Run train.py as a user would; returns wall seconds and the metrics of the evaluated epochs."""
    command = [sys.executable, "train.py", "--data", data, "--out", str(out),
               "--cache-dir", str(out / "cache"), *extra]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    startup = wall - log[-1]["elapsed"]  # interpreter start and imports, before train() began
    for entry in log:
        entry["wall"] = entry["elapsed"] + startup
    return wall, [entry for entry in log if "val_accuracy" in entry]  # the evaluated epochs


def time_to(log: list[dict], accuracy: float) -> str:
    reached = [m for m in log if m["val_accuracy"] >= accuracy]
    return f"{reached[0]['wall']:.0f} s (epoch {reached[0]['epoch']})" if reached else "not reached"


def train_steps(model, batches, step, seconds: float) -> float:
    """Images per second of `step(images, labels)` over batches, for about `seconds`."""
    model.train()
    seen, started = 0, None
    while True:
        for images, labels in batches:
            step(images, labels)
            if started is None:  # the first step warms up; time from the second
                started = time.perf_counter()
                continue
            seen += len(labels)
            if time.perf_counter() - started > seconds:
                return seen / (time.perf_counter() - started)


def throughput(data: str, seconds: float) -> dict:
    config = TrainConfig(data=data).resolved()
    dataset = find_dataset(data)
    model, preprocessing = build_model(config, dataset.classes)
    device = torch.device("cpu")
    precision, layout = resolve_precision(config.precision, device), memory_format(config.channels_last)
    model.to(memory_format=layout)
    optimizer = make_optimizer(config, model)

    def step(x, labels):  # the training step of train.py: the recipe's precision and memory order
        with autocast(device, precision):
            logits = model(x.contiguous(memory_format=layout)).float()
        loss = compute_loss("ce", logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    size = config.image_size
    tutorial = datasets.ImageFolder(str(Path(data) / "train"), transforms.Compose([
        transforms.Resize((size, size)), transforms.RandomHorizontalFlip(), transforms.ToTensor(),
        transforms.Normalize(preprocessing.mean, preprocessing.std)]))
    loader = DataLoader(tutorial, batch_size=config.batch_size, shuffle=True, num_workers=2,
                        persistent_workers=True)
    results = {"tutorial": train_steps(model, loader, step, seconds)}

    generator, policy = torch.Generator().manual_seed(0), Augmentation(min_scale=config.min_scale)
    started = time.perf_counter()  # decoded as train.py does: larger, for the crops (source_size)
    decoded = decode_images(dataset.train.paths, dataset.train.labels,
                            replace(preprocessing, image_size=policy.source_size(size)))
    results["decode_seconds"] = time.perf_counter() - started
    batches = Batches(decoded, config.batch_size, shuffle=True, drop_last=True, generator=generator)
    results["project"] = train_steps(
        model, batches, lambda x, y: step(preprocessing.normalize(augment(x, generator, policy, size=size)), y),
        seconds)

    noise = [(torch.randn(config.batch_size, 3, size, size), torch.randint(0, 2, (config.batch_size,)))] * 4
    results["compute"] = train_steps(model, noise, step, seconds)
    results.update(image_size=size, model=config.model, batch_size=config.batch_size, precision=precision,
                   tta_sizes=list(config.tta_sizes),
                   memory_order="channels-last" if config.channels_last else "NCHW")
    return results


def inference(data: str, checkpoint: Path) -> dict:
    val = Path(data) / "val"
    count = sum(1 for p in val.rglob("*") if p.is_file())
    folder = {}
    for mode in ("--tta", "--no-tta"):
        started = time.perf_counter()
        subprocess.run([sys.executable, "predict.py", str(val), "--checkpoint", str(checkpoint), "--json", mode],
                       cwd=REPO, check=False, stdout=subprocess.DEVNULL)
        folder[mode] = time.perf_counter() - started
    one = next(val.rglob("*.jpg"))
    started = time.perf_counter()
    subprocess.run([sys.executable, "predict.py", str(one), "--checkpoint", str(checkpoint)],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return {"images": count, "folder_seconds": folder, "single_seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="dataset with train/ and val/ (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=30, help="how long each throughput measurement runs (default: %(default)s)")
    parser.add_argument("--train-args", default="", help="extra flags for train.py, e.g. '--precision bf16' (default: none)")
    args = parser.parse_args()
    data = str(Path(args.data).resolve())

    with tempfile.TemporaryDirectory() as tmp:
        wall, log = run_recipe(data, Path(tmp) / "run", args.train_args.split())
        speed = inference(data, Path(tmp) / "run" / "best.pt")
    rates = throughput(data, args.seconds)

    best = max(log, key=lambda m: m["val_accuracy"])
    body = f"""
Default recipe `python train.py --data DATA {args.train_args}`: {log[-1]['epoch']} epochs in {wall:.0f} s wall
(process start to exit, decoding included), val evaluated after {len(log)} of them.

| | |
|---|---|
| final val accuracy | {log[-1]['val_accuracy']:.2%} |
| best val accuracy | {best['val_accuracy']:.2%} (epoch {best['epoch']}) |
| time to 85% val | {time_to(log, 0.85)} |
| time to 90% val | {time_to(log, 0.90)} |

Training throughput, {rates['model']} at {rates['image_size']} px, batch {rates['batch_size']}, {rates['precision']},
{rates['memory_order']}, the same training step for all three, images/s:

| pipeline | images/s | vs tutorial |
|---|---|---|
| tutorial (ImageFolder + Resize + ToTensor, DataLoader 2 workers) | {rates['tutorial']:.0f} | 1.0x |
| this project (uint8 tensors in memory, batch augmentation) | {rates['project']:.0f} | {rates['project'] / rates['tutorial']:.1f}x |
| pure compute (random tensors) | {rates['compute']:.0f} | {rates['compute'] / rates['tutorial']:.1f}x |

This project's pipeline runs at {rates['project'] / rates['compute']:.0%} of pure compute; decoding the
2,000 training photos once took {rates['decode_seconds']:.1f} s.

Inference: `predict.py` on {speed['images']} val photos (process start and decoding included) took
{speed['folder_seconds']['--tta']:.1f} s with the TTA training evaluated with (predict's default:
mirror image, test-time sizes {rates['tta_sizes']}), {speed['images'] / speed['folder_seconds']['--tta']:.0f} images/s;
{speed['folder_seconds']['--no-tta']:.1f} s with `--no-tta`, {speed['images'] / speed['folder_seconds']['--no-tta']:.0f} images/s.
One photo from process start (default TTA): {speed['single_seconds']:.2f} s.

Evaluated epochs (val accuracy, wall seconds since process start):
{' '.join(f"{m['epoch']}:{m['val_accuracy']:.3f}@{m['wall']:.0f}s" for m in log)}
"""
    write_section("from_scratch", "From scratch: default recipe", body)


if __name__ == "__main__":
    main()
