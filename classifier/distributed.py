"""Training on several processes: PyTorch's DistributedDataParallel, launched by torchrun.

    torchrun --standalone --nproc-per-node=4 train.py --data DIR            # one machine, 4 GPUs
    torchrun --nnodes=2 --node-rank=0 --nproc-per-node=4 \\
             --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 train.py --data DIR   # on each machine

torchrun starts one process per GPU (or per share of the CPU) and sets RANK, LOCAL_RANK and
WORLD_SIZE; `start` joins them into one process group (nccl on CUDA, gloo on the CPU). Without
torchrun, WORLD_SIZE is unset and everything here does nothing, so train.py has one code path.

What a distributed run does, so that N processes with --batch-size B train exactly as one
process with --batch-size N*B would (up to float rounding):
  - each global batch of N*B images is split between the ranks (data.Batches), and each image
    gets the same augmentation whichever rank handles it (data.augment);
  - gradients are averaged by DistributedDataParallel; batch norm uses the statistics of the
    whole global batch (nn.SyncBatchNorm on GPUs, GlobalBatchNorm2d on the CPU);
  - losses and correct counts are summed over ranks (all_sum), as is "was a stop requested?"
    (any_rank), so every rank stops at the same step;
  - only rank 0 prints, logs and writes checkpoints.
Dropout masks are drawn per rank, so with dropout the runs agree in distribution, not bit for bit.

Why data.Batches and not torch.utils.data.DistributedSampler: the images are already decoded
into one tensor, so batches are cut by indexing, with no DataLoader; and giving each rank a
contiguous slice of every global batch (rather than every N-th image, padded to a multiple
of N) is what lets a rank pick its images' augmentation out of the global batch's. The
shuffle is still reseeded every epoch (set_epoch's job), identically on every rank.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from classifier.errors import ClassifierError
from classifier.runtime import select_device


@dataclass
class Session:
    """This process's place in a run: rank 0 of 1 when not launched by torchrun."""

    device: torch.device
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @contextlib.contextmanager
    def main_first(self):
        """Rank 0 runs the block first (say, decoding into the cache), then the other ranks."""
        if self.world_size > 1 and not self.is_main:
            dist.barrier()
        yield
        if self.world_size > 1 and self.is_main:
            dist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to train: `model` itself, or in a distributed run `model` with global
        batch norm inside DistributedDataParallel (which shares `model`'s parameters)."""
        if self.world_size == 1:
            return model
        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
            return DistributedDataParallel(model, device_ids=[self.device])
        for module in model.modules():
            if type(module) is nn.BatchNorm2d:
                module.__class__ = GlobalBatchNorm2d  # same parameters and buffers, synced forward
        return DistributedDataParallel(model)


def start(device: str = "auto") -> Session:
    """Join the process group torchrun describes in the environment (or run alone)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Session(select_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = select_device(device, index=local_rank)
    if chosen.type == "mps":
        raise ClassifierError("distributed training runs on CUDA (nccl) or the CPU (gloo), not on "
                              "mps; use --device cpu, or train in one process on mps")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo",
                                device_id=chosen if chosen.type == "cuda" else None)
        atexit.register(dist.destroy_process_group)
    if rank != 0:
        sys.stdout = open(os.devnull, "w")  # progress and epoch lines come from rank 0 only
    return Session(chosen, rank, world_size)


def all_sum(values: list[float]) -> list[float]:
    """Each value summed over all ranks (the values themselves when running alone)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any rank (e.g. one of them got Ctrl-C)."""
    return all_sum([float(bool(flag))])[0] > 0


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with a gradient: every rank's output depends on every rank's input, so
    the gradient flowing back is itself summed over ranks."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """Batch norm over the global batch of all ranks, for the CPU, where nn.SyncBatchNorm
    refuses to run. Mean and variance are summed over ranks (two passes, as one process computes
    them), with gradients carried back across ranks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Statistics and normalization in fp32 whatever the input's dtype (under bf16 autocast the
        convolution before hands over bf16, as nn.BatchNorm2d computes); the output in the input's dtype."""
        if not self.training:
            return super().forward(x)
        dtype, x = x.dtype, x.float()
        dims, shape = [0, 2, 3], (1, -1, 1, 1)
        count = x.new_full((1,), x.numel() / x.shape[1])
        sums = _SumOverRanks.apply(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        centered = x - mean.view(shape)
        var = _SumOverRanks.apply((centered * centered).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None \
                    else 1.0 / self.num_batches_tracked.item()
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * n / (n - 1), factor)
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        out = out * self.weight.view(shape) + self.bias.view(shape) if self.affine else out
        return out.to(dtype)
