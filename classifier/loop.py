"""The training loop's parts, in plain PyTorch: one step (forward, loss, backward, update), one
epoch of steps, and evaluation. fitting.fit strings them together:

    for epoch in range(state.epoch, plan.epochs):
        train_one_epoch(trainer, batches, state, stop, plan)   # one pass over the training data
        evaluate(model, logits_of, val_batches, ...)           # loss and accuracy on val

This module knows nothing about files or flags.
Randomness (shuffling, augmentation, dropout) is drawn from generators seeded by
(seed, epoch, step), so a run interrupted at any step and resumed gives the same weights and
the same metrics as one that never stopped.
"""

from __future__ import annotations

import math
import signal
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel

from classifier import distributed
from classifier.config import TrainConfig
from classifier.data import Batches
from classifier.errors import ClassifierError
from classifier.plan import Plan
from classifier.progress import progress
from classifier.runtime import autocast


def compute_loss(kind: str, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0,
                 weight: torch.Tensor | None = None):
    """ce: cross-entropy; mse: the article's error, mean squared difference between the
    softmax probabilities and the one-hot target. targets: class indices [N], or class
    probabilities [N, classes] (mixed images). weight: of each class in the cross-entropy."""
    if kind == "ce":
        return F.cross_entropy(logits, targets, weight=weight, label_smoothing=label_smoothing)
    if targets.ndim == 1:
        targets = F.one_hot(targets, logits.shape[1]).float()
    return F.mse_loss(logits.softmax(dim=1), targets)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weights, not on biases and norm layers; the output layer at --lr, the
    other (pretrained) layers at --lr times --backbone-lr. lbfgs: the solver (probe.py) fits the
    output layer in its own float64 copy; this optimizer only holds the layer for the checkpoint's
    training state, its learning rate 1 (L-BFGS takes full steps)."""
    if config.optimizer == "lbfgs":
        return torch.optim.LBFGS(model.get_classifier().parameters(), lr=1)
    head = {id(p) for p in model.get_classifier().parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if (p.ndim > 1) == decay and (id(p) in head) == in_head],
               "weight_decay": config.weight_decay if decay else 0.0,
               "lr": config.lr * (1.0 if in_head else config.backbone_lr)}
              for in_head in (True, False) for decay in (True, False)]
    groups = [group for group in groups if group["params"]]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum,
                               nesterov=config.nesterov and config.momentum > 0)
    return torch.optim.AdamW(groups, lr=config.lr)


def make_schedule(config: TrainConfig, optimizer, plan: Plan):
    """Linear warmup, then cosine decay to zero (or constant) over the planned steps, updated every
    step; lbfgs: constant."""
    if config.optimizer == "lbfgs":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    warmup = max(1, round(config.warmup_epochs * plan.steps_per_epoch))
    total = max(plan.steps, warmup + 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def ema_update(decay: float):
    """An AveragedModel update: exponential moving average whose decay grows to `decay` as
    (1 + n) / (10 + n) over the first updates, so early averages are not dominated by the
    random initialization."""

    def update(averaged: list, current: list, updates) -> None:
        n = float(updates)
        if averaged[0].is_floating_point():  # called once per dtype; counters are copied as they are
            torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))
        else:
            torch._foreach_copy_(averaged, current)

    return update


def make_ema(model: nn.Module, decay: float) -> AveragedModel | None:
    """With decay > 0, the moving average that evaluation and checkpoints use instead of `model`."""
    return AveragedModel(model, multi_avg_fn=ema_update(decay), use_buffers=True) if decay else None


def step_seed(seed: int, epoch: int, step: int) -> int:
    return (seed * 1_000_003 + epoch) * 100_003 + step


@dataclass
class Running:
    """Sums over the steps of an epoch so far (over every process of a distributed run)."""

    loss_sum: float = 0.0
    correct: float = 0.0
    seen: float = 0.0

    @classmethod
    def restore(cls, saved) -> "Running":
        """From a checkpoint: a dict, or the [loss_sum, correct, seen] list of older checkpoints."""
        return cls(**saved) if isinstance(saved, dict) else cls(*saved)

    def add(self, loss_sum: float, correct: float, seen: float) -> None:
        self.loss_sum, self.correct, self.seen = self.loss_sum + loss_sum, self.correct + correct, self.seen + seen

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)


@dataclass
class TrainState:
    """Where a run is: what last.pt keeps so that --resume continues exactly here."""

    epoch: int = 0  # epochs finished (the current epoch, counted from 0)
    step: int = 0  # steps finished in the current epoch
    best_accuracy: float = -1.0
    running: Running = field(default_factory=Running)
    flops: float = 0.0  # floating-point operations of the run so far (fitting.py counts them)
    best_epoch: int = 0  # the epoch best.pt holds

    @classmethod
    def restore(cls, saved: dict) -> "TrainState":
        return cls(saved["epoch"], saved["step"], saved["best_accuracy"], Running.restore(saved["running"]),
                   saved.get("flops", 0.0), saved.get("best_epoch", 0))

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "best_accuracy": self.best_accuracy,
                "running": asdict(self.running), "flops": self.flops, "best_epoch": self.best_epoch}

    def next_epoch(self) -> None:
        self.epoch, self.step, self.running = self.epoch + 1, 0, Running()


@dataclass
class Trainer:
    """What every step of a run uses. `prepare(images, labels, generator, size)` turns a batch
    into the model's inputs and targets (augmentation to crops of `size`, mixing, normalization;
    nothing for cached features) and `forward` turns those into logits (the whole model, or for
    cached features its tail)."""

    model: nn.Module  # what the optimizer updates
    forward: Callable[[torch.Tensor], torch.Tensor]
    prepare: Callable[[torch.Tensor, torch.Tensor, torch.Generator, int], tuple[torch.Tensor, torch.Tensor]]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: AveragedModel | None
    config: TrainConfig
    device: torch.device
    freeze: bool = False  # a frozen body stays in eval mode
    class_weights: torch.Tensor | None = None  # of each class in the loss (classes of different sizes)


@dataclass
class Step:
    """One training step's forward pass: what the network saw and answered (the learn view shows it)."""

    inputs: torch.Tensor  # the batch as the network saw it: augmented, mixed, normalized
    targets: torch.Tensor  # class indices [N], or class probabilities [N, classes] (mixed images)
    logits: torch.Tensor  # the output layer's values, float32
    loss: torch.Tensor  # the error the update follows (config.loss)


def train_step(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
               size: int, where: str, observe: Callable[[Step], None] | None = None) -> list[float]:
    """One optimizer step on a batch (training crops of `size` pixels): forward, error, backward,
    update; returns [loss sum, correct, images] over all processes. observe(step), if given,
    sees the forward pass before the update."""
    config = trainer.config
    x, targets = trainer.prepare(images.to(trainer.device), labels.to(trainer.device), generator, size)
    with autocast(trainer.device, config.precision):
        logits = trainer.forward(x).float()
    loss = compute_loss(config.loss, logits, targets, config.label_smoothing, trainer.class_weights)
    if observe:
        observe(Step(x, targets, logits, loss))
    majority = targets.argmax(1) if targets.ndim == 2 else targets  # mixed: the larger share
    sums = distributed.all_sum([loss.item() * len(labels), (logits.argmax(1) == majority).sum().item(), len(labels)])
    if not math.isfinite(sums[0]):
        raise ClassifierError(f"the loss became {sums[0] / sums[2]} at {where}: training diverged; "
                              f"try a lower --lr (now {config.lr}); saved checkpoints were kept")
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.scaler.scale(loss).backward()
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.scheduler.step()
    if trainer.ema:
        trainer.ema.update_parameters(trainer.model)
    return sums


def start_epoch(trainer: Trainer, batches: Batches, epoch: int) -> None:
    """Train mode, and the epoch's order of batches: the same whether the epoch runs whole,
    resumed mid-way or one step at a time (learn.py)."""
    trainer.model.train(not trainer.freeze)
    trainer.model.get_classifier().train()
    batches.generator = torch.Generator().manual_seed(step_seed(trainer.config.seed, epoch, -1))


def seeded_step(trainer: Trainer, images: torch.Tensor, labels: torch.Tensor, state: TrainState, plan: Plan,
                observe: Callable[[Step], None] | None = None) -> None:
    """train_step on the batch at (state.epoch, state.step) with the randomness drawn for that
    place (augmentation, mixing, dropout), then state moves on by one step."""
    seed, epoch, step = trainer.config.seed, state.epoch, state.step
    torch.manual_seed(step_seed(seed, epoch, step))  # dropout
    generator = torch.Generator().manual_seed(step_seed(seed, epoch, step))
    state.running.add(*train_step(trainer, images, labels, generator, plan.train_size(epoch),
                                  f"epoch {epoch + 1}, step {step}", observe))
    state.step = step + 1


def train_one_epoch(trainer: Trainer, batches: Batches, state: TrainState, stop: "StopSignal", plan: Plan,
                    show: bool = True, on_step: Callable[[TrainState], None] | None = None) -> bool:
    """Train on every batch of epoch state.epoch from step state.step on, calling on_step(state)
    after each step; False if a stop was requested (in any process) before the last step, with
    `state` where it stopped."""
    start_epoch(trainer, batches, state.epoch)
    bar = progress(batches, f"epoch {state.epoch + 1}/{plan.epochs}", unit="batch", enabled=show)
    for step, (images, labels) in enumerate(bar):
        if step < state.step:
            continue  # resuming mid-epoch: these batches were already trained on
        seeded_step(trainer, images, labels, state, plan)
        bar.set_postfix(loss=f"{state.running.loss:.4f}", acc=f"{state.running.accuracy:.3f}")
        if on_step:
            on_step(state)
        if distributed.any_rank(stop.requested) and state.step < len(batches):
            return False
    return True


@torch.inference_mode()
def evaluate(model: nn.Module, logits_of: Callable[[list[torch.Tensor]], torch.Tensor],
             batches: list[Batches], loss_kind: str, device: torch.device) -> dict:
    """Loss and accuracy on images the model does not train on, and the logits and labels.
    `batches`: the same images at each test-time size (one Batches each, in step);
    `logits_of` turns one batch at every size into averaged logits (tta.py)."""
    model.eval()
    total_loss, correct, seen, logits_seen, labels_seen = 0.0, 0, 0, [], []
    for sizes in zip(*batches):
        labels = sizes[0][1].to(device)
        logits = logits_of([x.to(device) for x, _ in sizes])
        total_loss += compute_loss(loss_kind, logits, labels).item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        logits_seen.append(logits.cpu())
        labels_seen.append(labels.cpu())
    return {"loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1),
            "logits": torch.cat(logits_seen), "labels": torch.cat(labels_seen)}


class StopSignal:
    """While active, Ctrl-C (SIGINT) and SIGTERM ask the loop to stop after the current step,
    so the state it saves is consistent; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = ""

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
