"""Progress that never goes silent: a tqdm bar in a terminal, a plain line every
LOG_INTERVAL seconds when stderr is a log file, CI or nohup (where a bar is unreadable).

    for batch in progress(batches, "epoch 3/90", unit="batch"): ...

CLASSIFIER_PROGRESS_SECONDS sets LOG_INTERVAL (default 10).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator

from tqdm import tqdm

LOG_INTERVAL = float(os.environ.get("CLASSIFIER_PROGRESS_SECONDS", 10))  # between lines when stderr is no terminal


class LogProgress:
    """Iterates like tqdm; prints `desc: n/total (p%), rate, postfix` to stderr at most every
    `interval` seconds, and once at the end if the phase took longer than that."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None, unit: str, interval: float):
        self.iterable, self.desc, self.unit, self.interval = iterable, desc, unit, interval
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.count, self.postfix = 0, ""

    def set_postfix(self, **values) -> None:
        self.postfix = " ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.count += n

    def line(self, elapsed: float) -> str:
        done = f"{self.count}/{self.total} ({self.count / max(self.total, 1):.0%})" if self.total else f"{self.count}"
        rate = f"{self.count / elapsed:.1f} {self.unit}/s" if elapsed > 0 else ""
        return f"{self.desc}: {done} {self.unit}, {elapsed:.0f} s, {rate}" + (f", {self.postfix}" if self.postfix else "")

    def __iter__(self) -> Iterator:
        started = last = time.perf_counter()
        printed = 0
        for item in self.iterable:
            yield item
            self.count += 1
            now = time.perf_counter()
            if now - last >= self.interval:
                print(self.line(now - started), file=sys.stderr, flush=True)
                last, printed = now, self.count
        if time.perf_counter() - started >= self.interval and printed != self.count:
            print(self.line(time.perf_counter() - started), file=sys.stderr, flush=True)

    def __len__(self) -> int:
        return self.total or 0


def progress(iterable: Iterable, desc: str, total: int | None = None, unit: str = "img",
             enabled: bool = True, leave: bool = False, interval: float | None = None):
    """A tqdm bar on a terminal (kept when done with `leave`), LogProgress lines elsewhere,
    nothing when not `enabled` (say, on the ranks of a distributed run other than the first)."""
    if not enabled:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, unit=unit, leave=leave, file=sys.stderr)
    return LogProgress(iterable, desc, total, unit, LOG_INTERVAL if interval is None else interval)
