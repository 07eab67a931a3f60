"""fp32 against bf16 autocast, NCHW against channels-last memory order, on this CPU: training
and inference speed of the default convnet (the run's own training step), and how far bf16
moves its outputs.

    python -m benchmarks.precision --data ../shared/data/catsdogs

Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace

import torch

from benchmarks.common import class_tag, cpu_class, rate, write_section
from classifier import distributed, train
from classifier.config import TrainConfig
from classifier.runtime import autocast


def inference_rate(model, x: torch.Tensor, precision: str, seconds: float) -> float:
    model.eval()
    with torch.inference_mode(), autocast(x.device, precision):
        model(x)  # warm-up
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            model(x)
            done += len(x)
    return done / (time.perf_counter() - started)


def measure(data: str, precision: str, channels_last: bool, seconds: float) -> tuple[str, torch.Tensor]:
    """One table row, and the model's probabilities on a fixed batch."""
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(data=data, out=out, device="cpu", precision=precision,
                             channels_last=channels_last).resolved()
        torch.manual_seed(0)
        run = train.setup(config, None, distributed.start("cpu"), None)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    size, batch = config.image_size, run.plan.batch_size
    x = run.preprocessing.normalize(torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)))
    x = x.contiguous(memory_format=layout)
    noise = [(x, torch.randint(0, 2, (batch,)))] * 4
    training = rate(replace(run.trainer, prepare=lambda inputs, labels, generator, size: (inputs, labels)), noise, seconds)
    inference = inference_rate(run.trainer.model, x, precision, seconds)
    with torch.inference_mode(), autocast(x.device, precision):
        probabilities = run.trainer.model(x).float().softmax(1)
    return f"| {precision} | {'channels-last' if channels_last else 'NCHW'} | {training:.0f} | {inference:.0f} |", probabilities


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="dataset the run is set up on (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=20, help="length of each measurement (default: %(default)s)")
    args = parser.parse_args()
    rows, outputs = [], {}
    for channels_last in (False, True):
        for precision in ("fp32", "bf16"):
            row, outputs[precision] = measure(args.data, precision, channels_last, args.seconds)
            rows.append(row)
            print(row, flush=True)
    config = TrainConfig().resolved()
    difference = (outputs["fp32"] - outputs["bf16"]).abs().max().item()
    body = (f"Default convnet ({config.image_size} px, batch {config.batch_size}, channels "
            f"{','.join(map(str, config.channels))}), the run's training step on random inputs, images/s on "
            f"{torch.get_num_threads()} threads:\n\n| precision | memory order | training | inference |\n|---|---|---|---|\n"
            + "\n".join(rows) + f"\n\nLargest difference between fp32 and bf16 probabilities on one batch: {difference:.4f}.")
    write_section(f"precision-{class_tag()}", f"fp32 against bf16, NCHW against channels-last ({cpu_class()})", body)


if __name__ == "__main__":
    main()
