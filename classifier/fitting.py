"""Fitting a model: the pieces of a training run between the command line and the loop.

    build_model(config, classes)                    -> model and its preprocessing
    image_pipeline(...) / feature_pipeline(...)     -> Pipeline: what feeds the loop, and how
    make_trainer(config, plan, model, pipeline, ...) -> loop.Trainer: optimizer, schedule, ...
    fit(run, state, stop, started)                  -> the epochs, top to bottom:
        for each epoch: train_one_epoch -> validate (when due) -> log_epoch -> save_epoch

train.py builds a Run from the command line and calls fit; crossval.py calls fit once per fold
on the same pieces, writing nothing (Run.out None); a studio job runs train.py. Progress and
epoch results are events (Run.emit: a callable gets dicts; train.py writes them to
OUT/events.jsonl), besides the progress bar and the epoch lines.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from classifier import distributed
from classifier.augment import Augmentation, augment, mix
from classifier.calibration import calibrate
from classifier.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from classifier.config import TrainConfig
from classifier.data import Batches, CachedImageFolder, Dataset
from classifier.errors import ClassifierError
from classifier.features import Features, compute_features, feature_views
from classifier.images import Preprocessing
from classifier.loop import (Running, StopSignal, Trainer, TrainState, evaluate, make_optimizer, make_schedule,
                            train_one_epoch)
from classifier.models import create_model, model_arguments, model_entry
from classifier.neither import NeitherRule, training_bank
from classifier.plan import Plan
from classifier.probe import cross_validated_probe, tally
from classifier.runs import append_metrics, relative_paths
from classifier.runtime import grad_scaler, memory_format, one_thread
from classifier.tta import average, decodings, model_outputs


def build_model(config: TrainConfig, classes: list[str]) -> tuple[nn.Module, Preprocessing]:
    """The model and its preprocessing: new, pretrained, or from --init's checkpoint."""
    if not config.init:
        entry = model_entry(config.model)
        preprocessing = Preprocessing(**{"image_size": config.image_size, "tta_sizes": config.tta_sizes,
                                         "tta_below": config.tta_below, **entry.preprocessing})
        model = create_model(config.model, len(classes), pretrained=config.pretrained, weights=config.weights,
                             **model_arguments(config.model, asdict(config)))
        return model, preprocessing
    checkpoint = load_checkpoint(config.init)
    model = model_from_checkpoint(checkpoint, config.init)
    if checkpoint["classes"] != classes:
        model.reset_classifier(len(classes))
        print(f"{config.init} was trained on {checkpoint['classes']}; this data has {classes}: "
              f"new output layer for {len(classes)} classes, all other weights kept")
    return model, Preprocessing(**checkpoint["preprocessing"])


def freeze_all_but_classifier(model: nn.Module) -> None:
    for parameter in model.parameters():
        parameter.requires_grad = False
    for parameter in model.get_classifier().parameters():
        parameter.requires_grad = True


def load_splits(config: TrainConfig, dataset: Dataset, preprocessing: Preprocessing, crops: Augmentation | None,
                session: distributed.Session) -> tuple[CachedImageFolder, list[CachedImageFolder]]:
    """The training photos decoded once (larger when random crops are cut from them at every
    step: Augmentation.source_size), and the val photos at every test-time decoding."""
    train_size = crops.source_size(config.image_size) if crops else config.image_size
    options = dict(dataset=dataset, cache_dir=config.cache_dir or None, workers=config.workers or None)
    with session.main_first():  # in a distributed run, rank 0 fills the cache for the others
        train = CachedImageFolder(config.data, "train", train_size, preprocessing.resize, **options)
        val = [CachedImageFolder(config.data, "val", p.image_size, p.resize, **options)
               for p in decodings(preprocessing, config.tta)]
    return train, val


@dataclass
class Pipeline:
    """What feeds the loop: training inputs, how a batch of them is prepared and run, and how
    evaluation gets averaged logits from val inputs at every test-time size."""

    train_inputs: tuple[torch.Tensor, torch.Tensor]
    val_inputs: list[tuple[torch.Tensor, torch.Tensor]]
    prepare: Callable
    forward: Callable
    logits_of: Callable[[nn.Module], Callable]
    module: Callable  # what `forward` computes, unwrapped (no DistributedDataParallel): FLOPs are counted on it
    setup_flops: float = 0.0  # work done before the first step (the frozen pass over every photo)
    bank: torch.Tensor | None = None  # the training photos' ImageNet features, for the neither rule
    small_steps: bool = False  # a step is a few tiny operations (a linear probe): run on one thread
    features: tuple | None = None  # the cached features (train, [val at each size]): cross-validation reuses them


def image_pipeline(config: TrainConfig, trainee: nn.Module, preprocessing: Preprocessing, crops: Augmentation | None,
                   train: CachedImageFolder, val: list[CachedImageFolder], session: distributed.Session) -> Pipeline:
    """Photos: each step crops, flips and mixes the batch, then runs the whole model."""
    layout, shard = memory_format(config.channels_last), {"rank": session.rank, "world_size": session.world_size}

    def prepare(images, labels, generator, size):
        x = augment(images, generator, crops, **shard, size=size) if crops else images
        if config.mixing != "none":
            x, labels = mix(x, labels, len(train.classes), config.mixing, generator)
        return preprocessing.normalize(x).contiguous(memory_format=layout), labels

    def logits_of(model):
        return lambda sizes: model_outputs(model, sizes, preprocessing, config.tta, config.precision)[0]

    module = getattr(trainee, "module", trainee)
    return Pipeline((train.images, train.targets), [(v.images, v.targets) for v in val], prepare, trainee, logits_of,
                    getattr(module, "_orig_mod", module))


def feature_pipeline(config: TrainConfig, model: nn.Module, preprocessing: Preprocessing, crops: Augmentation | None,
                     train: CachedImageFolder, val: list[CachedImageFolder], device: torch.device) -> Pipeline:
    """Frozen leading stages: run them once over every view of every photo, then train the tail."""
    views = config.views if crops else 1  # the image, its mirror image, then random crops and flips
    features = compute_features(model, train.decoded(), preprocessing, device, views, flip=views > 1, policy=crops,
                                seed=config.seed, precision=config.precision, desc="features of train views")
    val_features = [compute_features(model, v.decoded(), preprocessing, device, flip=config.tta,
                                     precision=config.precision, desc="features of val") for v in val]
    pipeline = pipeline_on_features(model, features, val_features, preprocessing.tta_below)
    pipeline.bank = training_bank(model, features.values[:, 0], device)  # each photo's first view
    pipeline.features = (features, val_features)
    pipeline.setup_flops = sum(frozen_flops(model, split.images.shape[-1], device) * f.values.shape[0] * f.values.shape[1]
                               for f, split in zip([features, *val_features], [train, *val]))
    return pipeline


def count_flops(function: Callable, *args) -> float:
    """Floating-point operations of one call (torch.utils.flop_counter), without gradients; the
    total only (depth 0: no per-module tally, which made counting a pretrained network's pass
    take 10x its time)."""
    with torch.no_grad(), FlopCounterMode(display=False, depth=0) as counter:
        function(*args)
    return float(counter.get_total_flops())


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """The model in eval mode for a while: no batch-norm statistic moves, no dropout draws."""
    mode = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(mode)


def frozen_flops(model: nn.Module, size: int, device: torch.device) -> float:
    """FLOPs of the frozen stages on one photo of `size` pixels."""
    with evaluating(model):
        return count_flops(model.frozen_features, torch.zeros(1, 3, size, size, device=device))


def step_flops(run: "Run", size: int) -> tuple[float, float]:
    """(FLOPs to train on one example, FLOPs to evaluate one val photo): training counted as three
    times the forward pass (forward, and a backward pass of about twice its work). Counted in eval
    mode, so that no batch-norm statistic or random number the run uses is touched."""
    inputs, labels = run.pipeline.train_inputs
    x, _ = run.pipeline.prepare(inputs[:1].to(run.trainer.device), labels[:1].to(run.trainer.device),
                                torch.Generator().manual_seed(0), size)
    with evaluating(run.trainer.model):
        training = 3 * count_flops(run.pipeline.module, x)
    sizes = [images[:1].to(run.trainer.device) for images, _ in run.pipeline.val_inputs]
    return training, count_flops(run.pipeline.logits_of(run.inference_model), sizes)


def pipeline_on_features(model: nn.Module, train: Features, val: list[Features], tta_below: float = 1.0) -> Pipeline:
    """Train the model's tail on cached features; evaluate on val's views at every test-time size."""

    def logits_of(inference_model):
        return lambda sizes: average(lambda f: (inference_model.tail(f),), feature_views(sizes), tta_below)[0]

    probe = model.frozen_stages == len(model.stages)  # every stage frozen: only the output layer trains
    return Pipeline(train.examples(), [(f.values, f.labels) for f in val],
                    lambda x, labels, generator, size: (x.float(), labels), model.tail, logits_of, model.tail,
                    small_steps=probe)


def check_solver(config: TrainConfig, pipeline: Pipeline) -> None:
    """--optimizer lbfgs solves a linear probe on cached features, by cross-entropy, in one epoch."""
    if not pipeline.small_steps:
        raise ClassifierError(f"--optimizer lbfgs solves a linear probe: use it with --pretrained and --finetune "
                              f"probe (not --model {config.model} --finetune {config.finetune})")
    if config.loss != "ce":
        raise ClassifierError("--optimizer lbfgs minimizes the cross-entropy: leave out --loss mse")
    if config.time_budget:
        raise ClassifierError("--time-budget plans epochs of gradient descent; --optimizer lbfgs solves the probe "
                              "in one: leave out --time-budget, or add --optimizer adamw")


STEP_EVENT_SECONDS = 0.5  # step events at most this often (and after each epoch's last step)


@dataclass
class Run:
    """What a training run carries from start to end, besides the loop's TrainState."""

    config: TrainConfig
    session: distributed.Session
    out: Path | None  # None: write nothing (cross-validation)
    classes: list[str]
    preprocessing: Preprocessing
    trainer: Trainer
    pipeline: Pipeline
    val_sets: list[CachedImageFolder]
    plan: Plan
    listener: Callable[[dict], None] | None = None  # gets every event (emit), on the first process
    calibrated: dict = field(default_factory=dict)  # temperature and calibration of the latest val
    neither: NeitherRule | None = None  # the neither rule fitted with them
    best_probabilities: torch.Tensor | None = None  # best.pt's calibrated val probabilities
    cross_validation: dict | None = None  # crossval.py's estimate, kept in the checkpoints
    label_check: dict | None = None  # train.label_check: training photos that look like another class
    flops_per_step: dict = field(default_factory=dict)  # step_flops() of each training size, counted once

    @property
    def inference_model(self) -> nn.Module:
        """What is evaluated and saved: the moving average of the weights, if any."""
        return self.trainer.ema.module if self.trainer.ema else self.trainer.model

    def emit(self, kind: str, **fields) -> None:
        """One event for the listener: {"event": kind, "time": unix seconds, **fields}."""
        if self.listener and self.session.is_main:
            self.listener({"event": kind, "time": round(time.time(), 3), **fields})

    def use_plan(self, plan: Plan) -> None:
        """Follow another plan (a time budget's), with the schedule laid over its steps; before the first step."""
        self.plan = plan
        self.trainer.scheduler = make_schedule(self.config, self.trainer.optimizer, plan)


class Stopped(ClassifierError):
    """A stop was asked for (Ctrl-C, SIGTERM): last.pt is saved, the message says how to resume."""


def save(run: Run, state: TrainState, name: str, metrics: dict, with_state: bool) -> None:
    """best.pt (no training state) or last.pt (enough to resume), from the first process only."""
    if not run.session.is_main or run.out is None:
        return
    trainer = run.trainer
    settings = asdict(run.config)
    extra = {"epoch": state.epoch, "metrics": metrics, "config": settings, "relative_paths": relative_paths(settings),
             "plan": run.plan.to_dict(), **run.calibrated}
    if run.cross_validation:
        extra["cross_validation"] = run.cross_validation
    if run.label_check:
        extra["label_check"] = run.label_check
    if run.neither:
        extra.update(run.neither.to_checkpoint())
    if with_state:
        extra["training_state"] = {
            **state.to_dict(), "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
            "world_size": run.session.world_size, "scaler": trainer.scaler.state_dict()}
        if trainer.ema:
            extra["training_state"].update(model=trainer.model.state_dict(), ema_updates=int(trainer.ema.n_averaged))
    save_checkpoint(run.out / name, run.inference_model, run.classes, run.preprocessing.to_dict(), **extra)


def stop_here(run: Run, state: TrainState, metrics: dict, reason: str):
    save(run, state, "last.pt", metrics, with_state=True)
    launcher = "python" if run.session.world_size == 1 else "torchrun <the same options>"
    resume = f"{launcher} train.py --resume {run.out / 'last.pt'}"
    run.emit("stopped", reason=reason or "a signal to another process", epoch=state.epoch + 1, step=state.step,
             resume=resume)
    raise Stopped(f"stopped by {reason or 'a signal to another process'} at epoch {state.epoch + 1}, "
                  f"step {state.step}; progress saved. Resume with: {resume}")


def validate(run: Run, epoch: int) -> dict:
    """Evaluate on val, fit the calibration temperature and the neither rule on it."""
    config = run.config
    batches = [Batches(*inputs, 256) for inputs in run.pipeline.val_inputs]  # every rank evaluates all of val
    val = evaluate(run.inference_model, run.pipeline.logits_of(run.inference_model), batches, config.loss,
                   run.trainer.device)
    if not math.isfinite(val["loss"]):
        raise ClassifierError(f"the validation loss became {val['loss']} at epoch {epoch}: training diverged; "
                              f"try a lower --lr (now {config.lr}); saved checkpoints were kept")
    fit = calibrate(val["logits"], val["labels"])
    run.calibrated = {"temperature": fit["temperature"], "calibration": fit}
    run.neither = NeitherRule.fit(run.inference_model, run.classes, val["logits"], run.pipeline.bank)
    val["probabilities"] = (val["logits"] / fit["temperature"]).softmax(1)
    val["metrics"] = {"val_loss": val["loss"], "val_accuracy": val["accuracy"], "temperature": fit["temperature"],
                      "ece": fit["ece_before"], "ece_calibrated": fit["ece_after"],
                      "val_per_class": per_class_accuracy(val["logits"], val["labels"], run.classes)}
    return val


def epoch_metrics(run: Run, state: TrainState, seconds: float, val: dict | None, started: float) -> dict:
    """The epoch's record for metrics.jsonl: train loss and accuracy, learning rate, speed, val
    results if evaluated, and the floating-point operations of the run so far."""
    epoch, running = state.epoch + 1, state.running
    metrics = {"epoch": epoch, "train_loss": running.loss, "train_accuracy": running.accuracy,
               "lr": run.trainer.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
               "images_per_second": round(running.seen / seconds, 1), **(val["metrics"] if val else {})}
    size = run.plan.train_size(epoch - 1)
    run.flops_per_step[size] = run.flops_per_step.get(size) or step_flops(run, size)
    per_example, per_val_photo = run.flops_per_step[size]
    state.flops += (running.seen * per_example + (len(val["labels"]) * per_val_photo if val else 0)
                    + (run.pipeline.setup_flops if epoch == 1 else 0))
    metrics["tflop"], metrics["elapsed"] = round(state.flops / 1e12, 3), round(time.perf_counter() - started, 3)
    return metrics


def log_epoch(run: Run, metrics: dict) -> None:
    """The epoch's line (in long runs only for evaluated epochs), metrics.jsonl and the event."""
    line = (f"epoch {metrics['epoch']}/{run.plan.epochs}  train loss {metrics['train_loss']:.4f} "
            f"acc {metrics['train_accuracy']:.2%}")
    if "val_loss" in metrics:
        line += f"  val loss {metrics['val_loss']:.4f} acc {metrics['val_accuracy']:.2%}"
    if run.out is not None and ("val_loss" in metrics or run.plan.epochs <= 30):
        print(f"{line}  lr {metrics['lr']:.4g}  {metrics['seconds']:.1f}s  {metrics['images_per_second']:.0f} img/s")
    if run.session.is_main and run.out is not None:
        append_metrics(run.out, metrics)
    run.emit("epoch", **metrics)


def save_epoch(run: Run, state: TrainState, metrics: dict, val: dict | None) -> None:
    """last.pt after every epoch; best.pt when val accuracy improved."""
    if val and val["accuracy"] > state.best_accuracy:
        state.best_accuracy, state.best_epoch, run.best_probabilities = val["accuracy"], state.epoch, val["probabilities"]
        save(run, state, "best.pt", metrics, with_state=False)
    save(run, state, "last.pt", metrics, with_state=True)


def end_epoch(run: Run, state: TrainState, seconds: float, started: float, extra: dict | None = None) -> dict:
    """After an epoch's last step: validate if planned, log the epoch (with `extra`, e.g. the
    solver's choice), move on, save; its metrics."""
    val = validate(run, state.epoch + 1) if run.plan.evaluates_after(state.epoch + 1) else None
    metrics = {**epoch_metrics(run, state, seconds, val, started), **(extra or {})}
    log_epoch(run, metrics)
    state.next_epoch()
    save_epoch(run, state, metrics, val)
    return metrics


def step_events(run: Run, state: TrainState, started: float) -> Callable[[TrainState], None]:
    """on_step for train_one_epoch: a "step" event at most every STEP_EVENT_SECONDS and after an
    epoch's last step, with the running loss and accuracy, learning rate, speed and time left."""
    steps_per_epoch, first = run.plan.steps_per_epoch, state.epoch * run.plan.steps_per_epoch + state.step
    last = [0.0]

    def on_step(now_at: TrainState) -> None:
        now = time.perf_counter()
        if now - last[0] < STEP_EVENT_SECONDS and now_at.step < steps_per_epoch:
            return
        last[0], done = now, now_at.epoch * steps_per_epoch + now_at.step
        elapsed = now - started
        run.emit("step", epoch=now_at.epoch + 1, epochs=run.plan.epochs, step=now_at.step, steps=steps_per_epoch,
                 loss=now_at.running.loss, accuracy=now_at.running.accuracy,
                 lr=run.trainer.optimizer.param_groups[0]["lr"], elapsed=round(elapsed, 3),
                 images_per_second=round((done - first) * run.plan.batch_size * run.session.world_size / elapsed, 1),
                 eta=round(elapsed / max(done - first, 1) * (run.plan.steps - done), 1))

    return on_step


def solve_epoch(run: Run, state: TrainState, stop: StopSignal, on_step: Callable[[TrainState], None]) -> dict | None:
    """The epoch of --optimizer lbfgs (probe.py): the output layer solved on the training photos'
    features, its L2 strength chosen by cross-validation on them. Each fit is a step: on_step
    after it, with the loss and accuracy of the fits so far on their own training photos; the last
    step, the refit, leaves the model's loss and accuracy on all of them (the epoch's train_loss
    and train_accuracy, as any epoch's). Returns what the epoch record adds (the strength, as
    scikit-learn's C, and its out-of-fold loss and accuracy), or None when a stop was asked for.
    The solve is deterministic, so a stopped one starts again from its first fit on --resume and
    ends as one never stopped."""
    trainer, (inputs, labels) = run.trainer, run.pipeline.train_inputs
    features = inputs.float().flatten(1)
    state.step, state.running = 0, Running()

    def on_fit(loss_sum: float, correct: int, seen: int) -> bool:
        state.running.add(loss_sum, correct, seen)
        state.step += 1
        on_step(state)
        return not distributed.any_rank(stop.requested)

    views = run.config.views if run.config.augment else 1  # feature_pipeline's views of each photo, in a row
    weights = None if trainer.class_weights is None else trainer.class_weights.cpu()  # the features are on the CPU
    solved = cross_validated_probe(features, labels, len(run.classes), views, run.config.seed, weights,
                                   run.config.label_smoothing, on_fit)
    if solved is None:
        return None
    probe, chosen = solved
    head = trainer.model.get_classifier()
    with torch.no_grad():
        for parameter, value in zip((head.weight, head.bias), probe.folded()):
            parameter.copy_(value)
    if trainer.ema:
        trainer.ema.update_parameters(trainer.model)  # its first update copies the weights
    state.running, state.step = Running(), run.plan.steps_per_epoch
    state.running.add(*tally(probe.logits(features), labels))
    on_step(state)
    return {"l2_c": chosen["strength"], "cv_loss": chosen["loss"], "cv_accuracy": chosen["accuracy"]}


def fit(run: Run, state: TrainState, stop: StopSignal, started: float) -> dict:
    """The epochs, from where `state` is to the last planned one; returns the last epoch's metrics.
    Tiny steps (a linear probe) run on one thread: on a busy CPU each of their operations otherwise
    waits for a second thread, 10-20x slower (runtime.one_thread)."""
    plan, session, metrics = run.plan, run.session, {}
    run.emit("start", epochs=plan.epochs, steps_per_epoch=plan.steps_per_epoch, batch_size=plan.batch_size,
             images=len(run.pipeline.train_inputs[1]), classes=run.classes, model=run.config.model,
             resumed=bool(state.epoch or state.step))
    if plan.reason:
        run.emit("plan", epochs=plan.epochs, reason=plan.reason)
    batches = Batches(*run.pipeline.train_inputs, plan.batch_size, shuffle=True, drop_last=True,
                      rank=session.rank, world_size=session.world_size, passes=plan.passes)
    on_step = step_events(run, state, time.perf_counter())
    with one_thread() if run.pipeline.small_steps else contextlib.nullcontext():
        while state.epoch < plan.epochs:
            epoch_started = time.perf_counter()
            if run.config.optimizer == "lbfgs":
                solved = solve_epoch(run, state, stop, on_step)
                finished = solved is not None
            else:
                solved, finished = {}, train_one_epoch(run.trainer, batches, state, stop, plan,
                                                       session.is_main and run.out is not None, on_step)
            if not finished:
                stop_here(run, state, metrics, stop.requested)
            metrics = end_epoch(run, state, time.perf_counter() - epoch_started, started, solved)
            if distributed.any_rank(stop.requested) and state.epoch < plan.epochs:
                stop_here(run, state, metrics, stop.requested)
    run.emit("end", best_epoch=state.best_epoch, best_accuracy=state.best_accuracy, epochs=plan.epochs)
    return metrics


def make_trainer(config: TrainConfig, plan: Plan, model: nn.Module, pipeline: Pipeline, ema,
                 session: distributed.Session, class_weights: torch.Tensor | None = None) -> Trainer:
    """The optimizer, its schedule over the planned steps, and the rest of what every step uses."""
    optimizer = make_optimizer(config, model)
    weights = None if class_weights is None else class_weights.to(session.device)
    return Trainer(model, pipeline.forward, pipeline.prepare, optimizer, make_schedule(config, optimizer, plan),
                   grad_scaler(session.device, config.precision), ema, config, session.device, config.freeze, weights)


def class_weights(labels: torch.Tensor, num_classes: int, balance: bool) -> torch.Tensor | None:
    """With `balance` and classes of different sizes (largest over 1.5x the smallest), the loss
    weight of each class: inversely proportional to its photos, so every class counts alike."""
    counts = torch.bincount(labels, minlength=num_classes).double().clamp_min(1)
    if not balance or counts.max() <= 1.5 * counts.min():
        return None
    return (counts.sum() / (num_classes * counts)).float()


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, float]:
    right = logits.argmax(1) == labels
    return {name: right[labels == i].float().mean().item() for i, name in enumerate(classes) if (labels == i).any()}
