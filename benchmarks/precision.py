"""fp32 against bf16 autocast, NCHW against channels-last memory order, eager against
torch.compile (--compile), on this CPU: training and inference speed of the default convnet (the
run's own training step), and how far bf16 moves its outputs.

    python -m benchmarks.precision --data ../shared/data/catsdogs

Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
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


def measure(data: str, precision: str, channels_last: bool, seconds: float,
            compiled: bool = False) -> str:
    """One table row: the convnet of the recipe for `precision`, and how far `precision` moves
    its probabilities on a fixed batch from fp32's. `compiled`: the training step runs through torch.compile (what --compile does
    on a GPU; train.py refuses it on the CPU), compiling in the untimed first step; timed training
    only, as evaluation and predict run the model uncompiled."""
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
    started = time.perf_counter()
    forward = torch.compile(run.trainer.model) if compiled else run.trainer.forward
    training = rate(replace(run.trainer, forward=forward, prepare=lambda inputs, labels, generator, size: (inputs, labels)),
                    noise, seconds)
    inference = "-" if compiled else f"{inference_rate(run.trainer.model, x, precision, seconds):.0f}"
    total = time.perf_counter() - started
    run.trainer.model.eval()
    with torch.inference_mode():
        exact = run.trainer.model(x).float().softmax(1)
        with autocast(x.device, precision):
            moved = (run.trainer.model(x).float().softmax(1) - exact).abs().max().item()
    network = f"{size} px, channels {','.join(map(str, config.channels))}"
    layout = ("channels-last" if channels_last else "NCHW") + (", torch.compile" if compiled else "")
    return f"| {precision} | {network} | {layout} | {training:.0f} | {inference} | {moved:.4f} | {total:.0f} s |"


def compiled_row(data: str, precision: str, seconds: float) -> str:
    """measure(compiled=True) in a child process: PyTorch 2.14's generated CPU code can corrupt
    the heap and abort the process, or fail; the row then says how."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        try:
            return pool.submit(measure, data, precision, True, seconds, True).result()
        except Exception as error:  # BrokenProcessPool: the child died
            reason = (str(error).strip().splitlines() or [""])[-1][:120]
            return f"| {precision} | | channels-last, torch.compile | failed: {type(error).__name__}: {reason} | - | - | - |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="dataset the run is set up on (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=20, help="length of each measurement (default: %(default)s)")
    args = parser.parse_args()
    rows = []
    for channels_last in (False, True):
        for precision in ("fp32", "bf16"):
            rows.append(measure(args.data, precision, channels_last, args.seconds))
            print(rows[-1], flush=True)
    for precision in ("fp32", "bf16"):
        rows.append(compiled_row(args.data, precision, args.seconds))
        print(rows[-1], flush=True)
    body = (f"The default convnet of each precision's recipe, batch 64, the run's training step on random inputs, "
            f"images/s on {torch.get_num_threads()} threads (wall time: both measurements, compiling included):\n\n"
            "| precision | network | memory order, compiling | training | inference | largest change of a "
            "probability against fp32 | wall time |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    write_section(f"precision-{class_tag()}", f"fp32 against bf16, NCHW against channels-last, torch.compile "
                  f"({cpu_class()})", body)


if __name__ == "__main__":
    main()
