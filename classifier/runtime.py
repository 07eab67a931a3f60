"""Where the arithmetic runs: device choice and numeric precision."""

from __future__ import annotations

import contextlib

import torch

from classifier.errors import ClassifierError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16", "fp16")


def select_device(name: str = "auto") -> torch.device:
    """auto picks CUDA, then Apple's MPS, then the CPU; naming an absent device is an error."""
    if name not in DEVICES:
        raise ClassifierError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ClassifierError(f"--device {name} asked for, but PyTorch sees no {name} device here")
    return torch.device(name)


def autocast(device: torch.device, precision: str = "fp32"):
    """A context that runs the forward pass in bf16 or fp16 (fp32: does nothing)."""
    if precision not in PRECISIONS:
        raise ClassifierError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise ClassifierError("--precision fp16 needs a GPU; on the CPU use bf16 or fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
