"""fp32 against bf16 autocast, NCHW against channels-last memory order, on this CPU: training
and inference speed of the default convnet, and how far bf16 moves its outputs.

    python benchmarks/precision.py

Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from classifier.models import create_model, model_arguments  # noqa: E402
from classifier.runtime import autocast  # noqa: E402
from classifier.train import TrainConfig, compute_loss, make_optimizer  # noqa: E402
from results import write_section  # noqa: E402


def images_per_second(step, batch: int, seconds: float) -> float:
    step()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        step()
        done += batch
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20, help="length of each measurement (default: %(default)s)")
    args = parser.parse_args()
    config = TrainConfig().resolved()
    torch.manual_seed(0)
    model = create_model(config.model, 2, **model_arguments(config.model, vars(config)))
    optimizer = make_optimizer(config, model)
    device = torch.device("cpu")
    x = torch.randn(config.batch_size, 3, config.image_size, config.image_size)
    y = torch.randint(0, 2, (config.batch_size,))

    def train_step(precision: str):
        def step():
            with autocast(device, precision):
                logits = model(x).float()
            loss = compute_loss("ce", logits, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return step

    def infer_step(precision: str):
        @torch.inference_mode()
        def step():
            with autocast(device, precision):
                model(x)
        return step

    rows, outputs = [], {}
    for layout in (torch.contiguous_format, torch.channels_last):
        model.to(memory_format=layout)
        x = x.contiguous(memory_format=layout)
        for precision in ("fp32", "bf16"):
            model.train()
            train = images_per_second(train_step(precision), len(x), args.seconds)
            model.eval()
            infer = images_per_second(infer_step(precision), len(x), args.seconds)
            with torch.inference_mode(), autocast(device, precision):
                outputs[precision] = model(x).float().softmax(1)
            name = "channels-last" if layout == torch.channels_last else "NCHW"
            rows.append(f"| {precision} | {name} | {train:.0f} | {infer:.0f} |")
    difference = (outputs["fp32"] - outputs["bf16"]).abs().max().item()
    body = (f"Default convnet ({config.image_size} px, batch {config.batch_size}, channels "
            f"{','.join(map(str, config.channels))}), random inputs, images/s on {torch.get_num_threads()} "
            "threads:\n\n| precision | memory order | training | inference |\n|---|---|---|---|\n"
            + "\n".join(rows) +
            f"\n\nLargest difference between fp32 and bf16 probabilities on one batch: {difference:.4f}.")
    write_section("precision", "fp32 against bf16 autocast, NCHW against channels-last (CPU)", body)


if __name__ == "__main__":
    main()
