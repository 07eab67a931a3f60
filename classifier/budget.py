"""A time budget: plan as many epochs as fit in the minutes a run may take (--time-budget).

Before the first step, a throwaway copy of the model trains a few batches at the smallest and the
largest training size (progressive resizing makes early epochs cheaper) and evaluates one val
batch; from those timings, the time already spent, and how often val will be evaluated, the run
gets the number of epochs that ends it inside the budget, at most --epochs. The plan is printed,
kept in the checkpoint (--resume continues it), and the schedule (warmup, cosine, resizing) is
laid over the planned epochs as it would be over any number of epochs. On a CPU twice as fast the
same command trains about twice as many epochs.
"""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import replace

import torch

from classifier import distributed
from classifier.config import TrainConfig
from classifier.data import Batches
from classifier.fitting import Run, evaluating, steps_per_epoch
from classifier.loop import make_optimizer, make_schedule, train_step

TIMED_STEPS = 4  # per size, after one untimed step
MARGIN = 0.03  # of the budget, kept for saving checkpoints, the last predictions and noise in the timings


def seconds_per_example(run: Run, epoch: int) -> float:
    """Time of one training example at `epoch`'s size, on a copy of the model (nothing of the run moves)."""
    model = copy.deepcopy(run.trainer.model)
    trainer = replace(run.trainer, model=model, forward=model, optimizer=make_optimizer(run.config, model),
                      scheduler=_Constant(), ema=None)
    epoch_of_batches = Batches(*run.pipeline.train_inputs, run.config.batch_size, shuffle=True, drop_last=True,
                               generator=torch.Generator().manual_seed(1))
    batches = (batch for _ in itertools.count() for batch in epoch_of_batches)  # as many as the timing needs
    seen, started = 0, 0.0
    for step in range(TIMED_STEPS + 1):
        if step == 1:
            started = time.perf_counter()
        images, labels = next(batches)
        train_step(trainer, images, labels, torch.Generator().manual_seed(step), epoch, "timing")
        seen += len(labels) if step else 0
    return (time.perf_counter() - started) / seen


def seconds_per_evaluation(run: Run) -> float:
    """Time of one evaluation of every val photo, from one batch."""
    batch = [images[:32].to(run.trainer.device) for images, _ in run.pipeline.val_inputs]
    logits_of = run.pipeline.logits_of(run.inference_model)
    with evaluating(run.inference_model), torch.inference_mode():
        logits_of(batch)
        started = time.perf_counter()
        logits_of(batch)
    return (time.perf_counter() - started) * len(run.pipeline.val_inputs[0][1]) / len(batch[0])


def plan(run: Run, budget_minutes: float, started: float) -> int:
    """Set --epochs to as many as fit in the budget (at least 1, at most --epochs), and the
    schedule over them; every process of a distributed run follows the first one's plan."""
    config = run.config
    steps = steps_per_epoch(config, run.pipeline, run.session.world_size)
    examples = steps * config.batch_size * run.session.world_size
    small, large = (seconds_per_example(run, epoch) for epoch in (0, config.epochs - 1))
    epoch_seconds, evaluation = examples * mean_cost(config, small, large), seconds_per_evaluation(run)
    spent = time.perf_counter() - started
    left = budget_minutes * 60 * (1 - MARGIN) - spent

    def needs(epochs: int) -> float:
        evaluations = sum(replace(config, epochs=epochs).evaluates_after(e) for e in range(1, epochs + 1))
        return epochs * epoch_seconds + evaluations * evaluation

    fitting = max([e for e in range(1, config.epochs + 1) if needs(e) <= left], default=1)
    fitting = int(distributed.all_sum([fitting if run.session.is_main else 0])[0])
    print(f"time budget {budget_minutes:g} min: {epoch_seconds:.1f} s an epoch ({steps} steps), {evaluation:.1f} s "
          f"an evaluation, {spent:.0f} s spent: {fitting} of at most {config.epochs} epochs, ending after about "
          f"{(spent + needs(fitting)) / 60:.1f} min")
    config.epochs = fitting
    run.trainer.scheduler = make_schedule(config, run.trainer.optimizer, steps)
    return fitting


def mean_cost(config: TrainConfig, small: float, large: float) -> float:
    """Seconds per example averaged over the epochs, each size's cost interpolated by its area
    between the smallest and the largest (progressive resizing)."""
    sizes = [config.train_size(epoch) for epoch in range(config.epochs)]
    low, high = min(sizes), max(sizes)
    if high == low:
        return large
    return sum(small + (large - small) * (s * s - low * low) / (high * high - low * low) for s in sizes) / len(sizes)


class _Constant:
    """A scheduler that leaves the learning rate alone (the timing copy's)."""

    def step(self) -> None:
        pass
