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
from classifier.data import Batches
from classifier.fitting import Run, evaluating
from classifier.loop import make_optimizer, train_step
from classifier.plan import Plan, make_plan

TIMED_STEPS = 4  # per size, after one untimed step
MARGIN = 0.03  # of the budget, kept for saving checkpoints, the last predictions and noise in the timings


def seconds_per_example(run: Run, size: int) -> float:
    """Time of one training example at crops of `size`, on a copy of the model (nothing of the run moves)."""
    model = copy.deepcopy(run.trainer.model)
    trainer = replace(run.trainer, model=model, forward=model, optimizer=make_optimizer(run.config, model),
                      scheduler=_Constant(), ema=None)
    epoch_of_batches = Batches(*run.pipeline.train_inputs, run.plan.batch_size, shuffle=True, drop_last=True,
                               generator=torch.Generator().manual_seed(1))
    batches = (batch for _ in itertools.count() for batch in epoch_of_batches)  # as many as the timing needs
    seen, started = 0, 0.0
    for step in range(TIMED_STEPS + 1):
        if step == 1:
            started = time.perf_counter()
        images, labels = next(batches)
        train_step(trainer, images, labels, torch.Generator().manual_seed(step), size, "timing")
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


def plan_in_budget(run: Run, budget_minutes: float, started: float) -> Plan:
    """The plan with as many epochs as fit in the budget (at least 1, at most the run's plan's);
    every process of a distributed run follows the first one's plan."""
    config, plan, world = run.config, run.plan, run.session.world_size
    examples = len(run.pipeline.train_inputs[1])
    low, high = min(plan.sizes), max(plan.sizes)
    small, large = seconds_per_example(run, low), seconds_per_example(run, high)
    evaluation = seconds_per_evaluation(run)
    spent = time.perf_counter() - started
    left = budget_minutes * 60 * (1 - MARGIN) - spent
    per_epoch = plan.steps_per_epoch * plan.batch_size * world  # examples trained per epoch

    def needs(candidate: Plan) -> float:
        """Seconds of a plan: each epoch's cost interpolated by its crop area between the smallest and
        the largest size (progressive resizing), and its evaluations."""
        cost = [small + (large - small) * (s * s - low * low) / max(high * high - low * low, 1) for s in candidate.sizes]
        return per_epoch * sum(cost) + len(candidate.evaluated) * evaluation

    candidates = [make_plan(config, examples, world, epochs) for epochs in range(1, plan.epochs + 1)]
    fitting = max([c.epochs for c in candidates if needs(c) <= left], default=1)
    fitting = int(distributed.all_sum([fitting if run.session.is_main else 0])[0])
    chosen = make_plan(config, examples, world, fitting, reason=(
        f"time budget {budget_minutes:g} min: {per_epoch * large:.1f} s an epoch at full size "
        f"({plan.steps_per_epoch} steps), {evaluation:.1f} s an evaluation, {spent:.0f} s spent: {fitting} of at "
        f"most {plan.epochs} epochs"))
    print(f"{chosen.reason}, ending after about {(spent + needs(chosen)) / 60:.1f} min")
    return chosen


class _Constant:
    """A scheduler that leaves the learning rate alone (the timing copy's)."""

    def step(self) -> None:
        pass
