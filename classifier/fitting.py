"""Fitting a model: the pieces of a training run between the command line and the loop.

    build_model(config, classes)                    -> model and its preprocessing
    image_pipeline(...) / feature_pipeline(...)     -> Pipeline: what feeds the loop, and how
    make_trainer(config, model, pipeline, ...)      -> loop.Trainer: optimizer, schedule, ...
    fit(run, state, stop, started)                  -> the epochs: train_one_epoch, evaluate,
                                                       calibrate, metrics.jsonl, best.pt, last.pt

train.py builds a Run from the command line and calls fit; crossval.py calls fit once per fold
on the same pieces, writing nothing (Run.out None).
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
from classifier.loop import StopSignal, Trainer, TrainState, evaluate, make_optimizer, make_schedule, train_one_epoch
from classifier.models import create_model, model_arguments, model_entry
from classifier.neither import NeitherRule, training_bank
from classifier.runs import append_metrics
from classifier.runtime import grad_scaler, memory_format
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


def image_pipeline(config: TrainConfig, trainee: nn.Module, preprocessing: Preprocessing, crops: Augmentation | None,
                   train: CachedImageFolder, val: list[CachedImageFolder], session: distributed.Session) -> Pipeline:
    """Photos: each step crops, flips and mixes the batch, then runs the whole model."""
    layout, shard = memory_format(config.channels_last), {"rank": session.rank, "world_size": session.world_size}

    def prepare(images, labels, generator, epoch):
        x = augment(images, generator, crops, **shard, size=config.train_size(epoch)) if crops else images
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
    pipeline.setup_flops = sum(frozen_flops(model, split.images.shape[-1], device) * f.values.shape[0] * f.values.shape[1]
                               for f, split in zip([features, *val_features], [train, *val]))
    return pipeline


def count_flops(function: Callable, *args) -> float:
    """Floating-point operations of one call (torch.utils.flop_counter), without gradients."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
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


def step_flops(run: "Run", epoch: int) -> tuple[float, float]:
    """(FLOPs to train on one example, FLOPs to evaluate one val photo): training counted as three
    times the forward pass (forward, and a backward pass of about twice its work). Counted in eval
    mode, so that no batch-norm statistic or random number the run uses is touched."""
    inputs, labels = run.pipeline.train_inputs
    x, _ = run.pipeline.prepare(inputs[:1].to(run.trainer.device), labels[:1].to(run.trainer.device),
                                torch.Generator().manual_seed(0), epoch)
    with evaluating(run.trainer.model):
        training = 3 * count_flops(run.pipeline.module, x)
    sizes = [images[:1].to(run.trainer.device) for images, _ in run.pipeline.val_inputs]
    return training, count_flops(run.pipeline.logits_of(run.inference_model), sizes)


def pipeline_on_features(model: nn.Module, train: Features, val: list[Features], tta_below: float = 1.0) -> Pipeline:
    """Train the model's tail on cached features; evaluate on val's views at every test-time size."""

    def logits_of(inference_model):
        return lambda sizes: average(lambda f: (inference_model.tail(f),), feature_views(sizes), tta_below)[0]

    return Pipeline(train.examples(), [(f.values, f.labels) for f in val],
                    lambda x, labels, generator, epoch: (x.float(), labels), model.tail, logits_of, model.tail)


@dataclass
class Run:
    """What a training run carries from start to end, besides the loop's TrainState."""

    config: TrainConfig
    session: distributed.Session
    out: Path | None  # None: write nothing (cross-validation in the benchmarks)
    classes: list[str]
    preprocessing: Preprocessing
    trainer: Trainer
    pipeline: Pipeline
    val_sets: list[CachedImageFolder]
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


def save(run: Run, state: TrainState, name: str, metrics: dict, with_state: bool) -> None:
    """best.pt (no training state) or last.pt (enough to resume), from the first process only."""
    if not run.session.is_main or run.out is None:
        return
    trainer = run.trainer
    extra = {"epoch": state.epoch, "metrics": metrics, "config": asdict(run.config), **run.calibrated}
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
    raise ClassifierError(f"stopped by {reason or 'a signal to another process'} at epoch {state.epoch + 1}, "
                          f"step {state.step}; progress saved. Resume with: {launcher} train.py --resume "
                          f"{run.out / 'last.pt'}")


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


def end_epoch(run: Run, state: TrainState, seconds: float, started_run: float) -> dict:
    """Evaluate if due, log the epoch, save last.pt and (if val improved) best.pt."""
    epoch, running = state.epoch + 1, state.running
    metrics = {"epoch": epoch, "train_loss": running.loss, "train_accuracy": running.accuracy,
               "lr": run.trainer.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
               "images_per_second": round(running.seen / seconds, 1)}
    line = f"epoch {epoch}/{run.config.epochs}  train loss {running.loss:.4f} acc {running.accuracy:.2%}"
    val = validate(run, epoch) if run.config.evaluates_after(epoch) else None
    if val:
        metrics.update(val["metrics"])
        line += f"  val loss {val['loss']:.4f} acc {val['accuracy']:.2%}"
    size = run.config.train_size(epoch - 1)
    run.flops_per_step[size] = run.flops_per_step.get(size) or step_flops(run, epoch - 1)
    per_example, per_val_photo = run.flops_per_step[size]
    state.flops += (running.seen * per_example + (len(val["labels"]) * per_val_photo if val else 0)
                    + (run.pipeline.setup_flops if epoch == 1 else 0))
    metrics["tflop"], metrics["elapsed"] = round(state.flops / 1e12, 3), round(time.perf_counter() - started_run, 3)
    if run.out is not None and (val or run.config.epochs <= 30):  # long runs: the evaluated epochs
        print(f"{line}  lr {metrics['lr']:.4g}  {seconds:.1f}s  {metrics['images_per_second']:.0f} img/s")
    if run.session.is_main and run.out is not None:
        append_metrics(run.out, metrics)
    state.next_epoch()
    if val and val["accuracy"] > state.best_accuracy:
        state.best_accuracy, run.best_probabilities = val["accuracy"], val["probabilities"]
        save(run, state, "best.pt", metrics, with_state=False)
    save(run, state, "last.pt", metrics, with_state=True)
    return metrics


def make_trainer(config: TrainConfig, model: nn.Module, pipeline: Pipeline, ema, session: distributed.Session,
                 class_weights: torch.Tensor | None = None) -> Trainer:
    """The optimizer, its schedule over the run's steps, and the rest of what every step uses."""
    steps = len(Batches(*pipeline.train_inputs, config.batch_size * session.world_size, drop_last=True))
    optimizer = make_optimizer(config, model)
    weights = None if class_weights is None else class_weights.to(session.device)
    return Trainer(model, pipeline.forward, pipeline.prepare, optimizer, make_schedule(config, optimizer, steps),
                   grad_scaler(session.device, config.precision), ema, config, session.device, config.freeze, weights)


def steps_per_epoch(config: TrainConfig, pipeline: Pipeline, world_size: int = 1) -> int:
    return len(Batches(*pipeline.train_inputs, config.batch_size * world_size, drop_last=True))


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


def fit(run: Run, state: TrainState, stop: StopSignal, started: float) -> dict:
    """The epochs, from where `state` is to the last; returns the last epoch's metrics."""
    config, session, metrics = run.config, run.session, {}
    shard = {"rank": session.rank, "world_size": session.world_size}
    batches = Batches(*run.pipeline.train_inputs, config.batch_size, shuffle=True, drop_last=True, **shard)
    while state.epoch < config.epochs:
        epoch_started = time.perf_counter()
        if not train_one_epoch(run.trainer, batches, state, stop, show=session.is_main and run.out is not None):
            stop_here(run, state, metrics, stop.requested)
        metrics = end_epoch(run, state, time.perf_counter() - epoch_started, started)
        if distributed.any_rank(stop.requested) and state.epoch < config.epochs:
            stop_here(run, state, metrics, stop.requested)
    return metrics
