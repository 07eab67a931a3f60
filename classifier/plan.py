"""What a run derives from its settings and its data before the first step: how many epochs of
how many steps, the training crop size of each epoch, and after which epochs val is evaluated
(a probe solved by L-BFGS: one epoch, a step per fit).

The settings (config.TrainConfig) are resolved once and never change; the plan is separate
plain data, made from them and the number of training examples, possibly shortened to fit a
time budget (budget.py), printed, and kept in last.pt so that --resume continues the same plan.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from classifier.config import TrainConfig
from classifier.probe import solve_steps


@dataclass(frozen=True)
class Plan:
    epochs: int
    batch_size: int  # per process; under torchrun the global batch is world_size times larger
    steps_per_epoch: int
    sizes: tuple  # the training crop size of each epoch, counted from 0 (progressive resizing)
    evaluated: tuple  # the epochs, counted from 1, after which val is evaluated
    reason: str = ""  # why the plan differs from the settings' (--min-steps, --time-budget)
    passes: int = 1  # over the training examples in each epoch (a small folder's epochs make several)

    def train_size(self, epoch: int) -> int:
        """The training crop size of a 0-based epoch."""
        return self.sizes[min(epoch, len(self.sizes) - 1)]

    def evaluates_after(self, epoch: int) -> bool:
        """Whether val is evaluated (and best.pt possibly saved) after this 1-based epoch."""
        return epoch in self.evaluated

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "Plan":
        return cls(**{**saved, "sizes": tuple(saved["sizes"]), "evaluated": tuple(saved["evaluated"])})


def crop_sizes(config: TrainConfig, epochs: int) -> tuple:
    """Each epoch's crop size: with --size-from, growing from it to --image-size over the first
    --size-ramp of the epochs in steps of 8 pixels (progressive resizing: early epochs learn
    coarse shapes at a fraction of the cost), then --image-size."""
    ramp = round(epochs * (config.size_ramp or 0))

    def size(epoch: int) -> int:
        if not config.size_from or epoch >= ramp:
            return config.image_size
        grown = config.size_from + (config.image_size - config.size_from) * epoch / max(ramp - 1, 1)
        return min(config.image_size, int(grown // 8 * 8))

    return tuple(size(epoch) for epoch in range(epochs))


def evaluated_epochs(eval_every: int, epochs: int) -> tuple:
    """--eval-every N, or with 0 every epoch in runs of up to 10 epochs and else about 10 times
    per run; always after the last epoch."""
    every = eval_every or math.ceil(epochs / 10)
    return tuple(e for e in range(1, epochs + 1) if e % every == 0 or e == epochs)


def make_plan(config: TrainConfig, examples: int, world_size: int = 1, epochs: int | None = None,
              reason: str = "") -> Plan:
    """The plan for `examples` training examples in batches of --batch-size (fewer when there are
    fewer examples than that per process): `epochs` epochs, or --epochs. A small folder's epochs
    pass over its examples several times, so that training takes at least --min-steps steps in
    the same epochs: as many evaluations, checkpoints and epoch records as a large folder's,
    not one of each per step (a dozen photos a class: one step a pass). --optimizer lbfgs: one
    epoch, a full-batch step per fit of the solve (probe.py)."""
    if config.optimizer == "lbfgs":
        return Plan(1, examples, solve_steps(examples), crop_sizes(config, 1), (1,))
    batch_size = min(config.batch_size, max(1, examples // world_size))
    steps, passes = max(1, examples // (batch_size * world_size)), 1  # the last incomplete batch is dropped
    if epochs is None:
        epochs = config.epochs
        if steps * epochs < config.min_steps:
            passes = math.ceil(config.min_steps / (steps * epochs))
            reason = (f"{steps} step(s) a pass over the training photos: {passes} passes an epoch, "
                      f"{steps * passes * epochs} steps for at least {config.min_steps} (--min-steps)")
    return Plan(epochs, batch_size, steps * passes, crop_sizes(config, epochs),
                evaluated_epochs(config.eval_every, epochs), reason, passes)
