"""What every benchmark shares: the machine it ran on, running a command as a user would, and
its section of benchmarks/RESULTS.md. Run the benchmarks as modules from the repository root:

    python -m benchmarks.from_scratch --data ../shared/data/catsdogs
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from classifier.loop import Trainer, train_step

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")  # what decides the speed of PyTorch on a CPU
EMULATION = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}  # an AVX2-only CPU, approximately


def cpu() -> dict:
    """Model name and the instruction-set flags that matter, from /proc/cpuinfo."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    flags = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split()) if "flags" in info else set()
    return {"model": model.group(1).strip() if model else platform.processor(), "flags": [f for f in FLAGS if f in flags]}


def cpu_class(environment: dict | None = None) -> str:
    """"bf16" (native bf16: AVX512-BF16 or AMX) or "AVX2" (no native bf16), as a run sees it:
    the AVX2 emulation variables make a bf16 machine run as the AVX2 class, approximately."""
    environment = os.environ if environment is None else environment
    if all(environment.get(k) == v for k, v in EMULATION.items()):
        return "AVX2 (emulated: ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 on a bf16 CPU)"
    return "bf16" if {"avx512_bf16", "amx_tile"} & set(cpu()["flags"]) else "AVX2"


def class_tag() -> str:
    """avx2 or bf16: the suffix of a benchmark's section, so each CPU class keeps its own."""
    return "avx2" if cpu_class().startswith("AVX2") else "bf16"


def machine(environment: dict | None = None) -> str:
    """One line that lets a figure from this machine be compared with another's."""
    environment = os.environ if environment is None else environment
    info, load = cpu(), os.getloadavg()[0]
    allocator = "glibc defaults" if environment.get("CLASSIFIER_ALLOCATOR") == "system" \
        else "glibc with freed memory kept (runtime.keep_freed_memory)"
    return (f"{info['model']}, {os.cpu_count()} cores, flags {' '.join(info['flags']) or 'none of ' + ', '.join(FLAGS)}; "
            f"class {cpu_class(environment)}; {torch.get_num_threads()} threads; allocator {allocator}; "
            f"load average {load:.2f} at the end")


def run_command(args: list[str], environment: dict | None = None) -> tuple[float, str]:
    """Run `python ARGS` from the repository root as a user would; (wall seconds, stdout)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=REPO, check=True, capture_output=True, text=True,
                            env={**os.environ, **(environment or {})})
    return time.perf_counter() - started, result.stdout


def train_run(data: str, out: Path, flags: list[str], environment: dict | None = None) -> dict:
    """`python train.py --data DATA --out OUT FLAGS` with a cold decode cache: wall seconds, the
    evaluated epochs (with the wall time since process start at which each ended), best.pt, what it printed."""
    wall, stdout = run_command(["train.py", "--data", data, "--out", str(out), "--cache-dir", str(out / "cache"), *flags],
                               environment)
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    startup = wall - log[-1]["elapsed"]  # interpreter start and imports, before train() began
    for entry in log:
        entry["wall"] = entry["elapsed"] + startup
    best = torch.load(out / "best.pt", map_location="cpu", weights_only=True)
    return {"wall": wall, "log": log, "evaluated": [m for m in log if "val_accuracy" in m], "best": best, "stdout": stdout}


def write_section(name: str, title: str, body: str, environment: dict | None = None) -> None:
    """Replace (or append) the section `name` of RESULTS.md, stamped with command, date and machine."""
    command = "python -m benchmarks." + " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).stem, *sys.argv[1:]])
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    section = (f"<!-- {name}:start -->\n## {title}\n\n`{command}` on {stamp}\n\nMachine: {machine(environment)}\n\n"
               f"{body.strip()}\n<!-- {name}:end -->")
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\nEach section is rewritten by the script named in it.\n"
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)
    print(section)


def rate(trainer: Trainer, batches, seconds: float, size: int = 0) -> float:
    """Images per second of the library's training step over `batches` (repeated), for about
    `seconds`, cropping to `size` pixels (0: batches go in at their own size); the first step warms
    up and is not timed."""
    trainer.model.train()
    seen, started, step = 0, None, 0
    while True:
        for images, labels in batches:
            train_step(trainer, images, labels, torch.Generator().manual_seed(step), size, "benchmark")
            step += 1
            if started is None:
                started = time.perf_counter()
                continue
            seen += len(labels)
            if time.perf_counter() - started > seconds:
                return seen / (time.perf_counter() - started)
