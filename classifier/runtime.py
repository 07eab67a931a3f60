"""Where the arithmetic runs: device choice, numeric precision, memory layout, compilation."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import os
import platform
import sys

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from classifier.errors import ClassifierError

DEVICES = ("auto", "cpu", "cuda", "mps")
# glibc mallopt parameters (malloc.h): no mmap per large buffer, no trimming, 1 GB of headroom
MALLOC_SETTINGS = {"M_MMAP_MAX": (-4, 0), "M_TRIM_THRESHOLD": (-1, 2**31 - 1), "M_TOP_PAD": (-2, 1 << 30)}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def select_device(name: str = "auto", index: int | None = None) -> torch.device:
    """auto picks CUDA, then Apple's MPS, then the CPU; naming an absent device is an error.

    index picks one of several GPUs (a distributed run's local rank) and makes it current.
    """
    if name not in DEVICES:
        raise ClassifierError(f"unknown device {name!r}: choose one of {', '.join(DEVICES)}")
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        name = "cuda" if cuda else "mps" if mps else "cpu"
    if (name == "cuda" and not cuda) or (name == "mps" and not mps):
        raise ClassifierError(f"--device {name} asked for, but PyTorch sees no {name} device here")
    if name == "cuda" and index is not None:
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(name)


def native_bf16(device: torch.device) -> bool:
    """Whether the device computes in bf16 natively: CUDA GPUs that support it, and CPUs
    with AVX512-BF16 or AMX instructions (elsewhere bf16 is emulated, and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() in ("default", "avx2"):
            return False  # PyTorch told to use no more than AVX2 (how the README emulates such CPUs)
        return any(getattr(torch.cpu, check, lambda: False)()
                   for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto: bf16 where the device computes it natively (see native_bf16), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ClassifierError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(device: torch.device, precision: str = "fp32"):
    """A context that runs the forward pass in bf16 or fp16 (fp32: does nothing; auto: see
    resolve_precision)."""
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise ClassifierError("--precision fp16 needs a GPU; on the CPU use bf16 or fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str = "fp32") -> torch.amp.GradScaler:
    """fp16 training on CUDA scales the loss so small gradients do not underflow; for every
    other precision the scaler is a pass-through (scale(loss) is loss, step(opt) is opt.step())."""
    if precision == "fp16" and device.type != "cuda":
        raise ClassifierError(f"--precision fp16 trains on CUDA only (gradient scaling); on "
                              f"{device.type} use bf16 or fp32")
    return torch.amp.GradScaler("cuda", enabled=precision == "fp16")


def memory_format(channels_last: bool) -> torch.memory_format:
    """channels_last stores images and convolution weights as NHWC, which tensor cores (and
    oneDNN on recent CPUs) run faster; the numbers are the same."""
    return torch.channels_last if channels_last else torch.contiguous_format


def compile_model(model: nn.Module, device: torch.device, enabled: bool) -> nn.Module:
    """torch.compile(model) when enabled, on CUDA GPUs only: the first steps are slow while it
    compiles, then each step is faster. On the CPU it trained this project's convnets 35-40%
    slower in both CPU classes, and PyTorch 2.14's generated CPU code corrupts memory for some
    stage widths (benchmarks/RESULTS.md, "fp32 against bf16"), so it is refused there."""
    if not enabled:
        return model
    if device.type != "cuda":
        raise ClassifierError(f"--compile is for CUDA GPUs: on {device.type} torch.compile trains these networks "
                              f"slower or crashes (benchmarks/RESULTS.md); train without --compile")
    return torch.compile(model)


def fuse_batch_norms(model: nn.Module) -> nn.Module:
    """An inference copy of `model` (in eval mode) in which every convolution that is followed by
    a batch norm inside an nn.Sequential absorbs it: the same outputs to float rounding, one pass
    over the activations instead of two (the frozen pass of EfficientNet-Lite0 runs 1.3x faster
    on a CPU). The model itself is left alone: checkpoints keep their batch norms."""
    fused = copy.deepcopy(model).eval()
    for sequence in [m for m in fused.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(sequence) - 1):
            conv, norm = sequence[i], sequence[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) \
                    and conv.out_channels == norm.num_features:
                sequence[i], sequence[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return fused


@contextlib.contextmanager
def one_thread():
    """Run small tensor work (the probe: thousands of tiny L-BFGS operations) on one thread: more
    threads only add synchronisation, which on a busy 2-core machine made the probe 20x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep the memory PyTorch frees inside the process; True if it did.

    By default glibc hands every large freed buffer (a forward pass's activations) back to the
    operating system and page-faults it in again on the next pass: EfficientNet-Lite0 inference on
    a 2-core AMD Zen 3 spent 17 of its 31 s of CPU time in the kernel (13.7 images/s; 35.5 with
    freed memory kept). Every command calls this first (cli.run_command); CLASSIFIER_ALLOCATOR=system
    keeps glibc's defaults. Elsewhere than Linux with glibc it does nothing.
    """
    if os.environ.get("CLASSIFIER_ALLOCATOR") == "system" or sys.platform != "linux" \
            or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return all(libc.mallopt(parameter, value) == 1 for parameter, value in MALLOC_SETTINGS.values())
