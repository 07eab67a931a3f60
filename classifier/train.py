"""Train a classifier: `python train.py --data DIR` (every flag: `python train.py --help`).

    train(config)
      set up:   resume? -> recipe -> data (decoded once) -> model -> optimizer, schedule, EMA
      loop:     train_one_epoch -> evaluate, calibrate -> metrics.jsonl, best.pt, last.pt
      finish:   val_predictions.jsonl (and the report with --report)

The loop itself is loop.py; settings are config.py's TrainConfig, filled from recipes.py.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from classifier import distributed, recipes
from classifier.augment import Augmentation, augment, mix
from classifier.calibration import calibrate
from classifier.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from classifier.cli import add_config_flags, run_command
from classifier.config import TrainConfig
from classifier.data import Batches, CachedImageFolder, Dataset, check_usable, find_photos
from classifier.errors import ClassifierError
from classifier.features import Features, compute_features, feature_views, uses_cached_features
from classifier.files import check_free_space, check_writable, load_weights
from classifier.images import Preprocessing
from classifier.loop import (StopSignal, Trainer, TrainState, evaluate, make_ema, make_optimizer, make_schedule,
                             train_one_epoch)
from classifier.models import create_model, list_models, model_arguments, model_entry
from classifier.neither import neither_rule
from classifier.plots import require_matplotlib
from classifier.report import build_report
from classifier.runs import append_metrics, write_predictions
from classifier.runtime import compile_model, grad_scaler, memory_format, resolve_precision
from classifier.tta import average, decodings, model_outputs


def build_model(config: TrainConfig, classes: list[str]) -> tuple[nn.Module, Preprocessing]:
    """The model and its preprocessing: new, pretrained, or from --init's checkpoint."""
    if not config.init:
        entry = model_entry(config.model)
        preprocessing = Preprocessing(**{"image_size": config.image_size, "tta_sizes": config.tta_sizes,
                                         **entry.preprocessing})
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


def report_skipped(out: Path, splits: list[CachedImageFolder], session: distributed.Session) -> None:
    """List the unreadable files of this run in OUT/skipped.txt (never an earlier run's)."""
    skipped = [reason for split in splits for _, reason in split.skipped]
    if session.is_main:
        (out / "skipped.txt").unlink(missing_ok=True)
        if skipped:
            (out / "skipped.txt").write_text("".join(f"{reason}\n" for reason in skipped))
            print(f"skipped {len(skipped)} unreadable image(s), listed in {out / 'skipped.txt'}")


@dataclass
class Pipeline:
    """What feeds the loop: training inputs, how a batch of them is prepared and run, and how
    evaluation gets averaged logits from val inputs at every test-time size."""

    train_inputs: tuple[torch.Tensor, torch.Tensor]
    val_inputs: list[tuple[torch.Tensor, torch.Tensor]]
    prepare: Callable
    forward: Callable
    logits_of: Callable[[nn.Module], Callable]


def image_pipeline(config: TrainConfig, trainee: nn.Module, preprocessing: Preprocessing, crops: Augmentation | None,
                   train: CachedImageFolder, val: list[CachedImageFolder], session: distributed.Session) -> Pipeline:
    """Photos: each step crops, flips and mixes the batch, then runs the whole model."""
    layout, shard = memory_format(config.channels_last), {"rank": session.rank, "world_size": session.world_size}

    def prepare(images, labels, generator):
        x = augment(images, generator, crops, **shard, size=config.image_size) if crops else images
        if config.mixing != "none":
            x, labels = mix(x, labels, len(train.classes), config.mixing, generator)
        return preprocessing.normalize(x).contiguous(memory_format=layout), labels

    def logits_of(model):
        return lambda sizes: model_outputs(model, sizes, preprocessing, config.tta, config.precision)[0]

    return Pipeline((train.images, train.targets), [(v.images, v.targets) for v in val], prepare, trainee, logits_of)


def feature_pipeline(config: TrainConfig, model: nn.Module, preprocessing: Preprocessing, crops: Augmentation | None,
                     train: CachedImageFolder, val: list[CachedImageFolder], device: torch.device) -> Pipeline:
    """Frozen leading stages: run them once over every view of every photo, then train the tail."""
    views = config.views if crops else 1  # the image, its mirror image, then random crops and flips
    features = compute_features(model, train.decoded(), preprocessing, device, views, flip=views > 1, policy=crops,
                                seed=config.seed, precision=config.precision, desc="features of train views")
    val_features = [compute_features(model, v.decoded(), preprocessing, device, flip=config.tta,
                                     precision=config.precision, desc="features of val") for v in val]
    return pipeline_on_features(model, features, val_features)


def pipeline_on_features(model: nn.Module, train: Features, val: list[Features]) -> Pipeline:
    """Train the model's tail on cached features; evaluate on val's views at every test-time size."""

    def logits_of(inference_model):
        return lambda sizes: average(lambda f: (inference_model.tail(f),), feature_views(sizes))[0]

    return Pipeline(train.examples(), [(f.values, f.labels) for f in val],
                    lambda x, labels, generator: (x.float(), labels), model.tail, logits_of)


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
    calibrated: dict = field(default_factory=dict)  # temperature, calibration, neither rule of the latest val
    best_probabilities: torch.Tensor | None = None  # best.pt's calibrated val probabilities

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
    run.calibrated = {"temperature": fit["temperature"], "calibration": fit,
                      "neither": neither_rule(run.inference_model, run.classes, val["logits"])}
    val["probabilities"] = (val["logits"] / fit["temperature"]).softmax(1)
    val["metrics"] = {"val_loss": val["loss"], "val_accuracy": val["accuracy"], "temperature": fit["temperature"],
                      "ece": fit["ece_before"], "ece_calibrated": fit["ece_after"]}
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
    metrics["elapsed"] = round(time.perf_counter() - started_run, 3)
    if run.out is not None:
        print(f"{line}  lr {metrics['lr']:.4g}  {seconds:.1f}s  {metrics['images_per_second']:.0f} img/s")
    if run.session.is_main and run.out is not None:
        append_metrics(run.out, metrics)
    state.next_epoch()
    if val and val["accuracy"] > state.best_accuracy:
        state.best_accuracy, run.best_probabilities = val["accuracy"], val["probabilities"]
        save(run, state, "best.pt", metrics, with_state=False)
    save(run, state, "last.pt", metrics, with_state=True)
    return metrics


def restore(config: TrainConfig) -> tuple[TrainConfig, dict | None]:
    """With --resume, the settings and the checkpoint of the interrupted run."""
    if not config.resume:
        return config, None
    resumed = load_checkpoint(config.resume)
    if "training_state" not in resumed:
        raise ClassifierError(f"{config.resume}: holds no training state; resume from a last.pt")
    return TrainConfig.from_dict({**resumed["config"], "resume": config.resume}), resumed


def resume_training(run: Run, resumed: dict) -> TrainState:
    """Put weights, optimizer, schedule and the loop's place back as last.pt left them."""
    trainer, saved = run.trainer, resumed["training_state"]
    if saved.get("world_size", 1) != run.session.world_size:
        raise ClassifierError(
            f"{run.config.resume} was trained by {saved.get('world_size', 1)} process(es); resume it "
            f"with as many (now {run.session.world_size}), so the global batch stays the same")
    trainer.optimizer.load_state_dict(saved["optimizer"])
    trainer.scheduler.load_state_dict(saved["scheduler"])
    if saved.get("scaler"):
        trainer.scaler.load_state_dict(saved["scaler"])
    state = TrainState.restore(saved)
    print(f"resuming {run.config.resume} at epoch {state.epoch + 1}, step {state.step}")
    return state


def prepare_model(config: TrainConfig, classes: list[str], resumed: dict | None, out: Path,
                  session: distributed.Session):
    """The model (with resumed weights), its moving average, and the module the steps call."""
    model, preprocessing = build_model(config, classes)
    config.image_size, config.tta_sizes = preprocessing.image_size, preprocessing.tta_sizes  # --init keeps its own
    if session.is_main:
        check_free_space(out, model)
    if resumed:
        load_weights(model, resumed["training_state"].get("model", resumed["state_dict"]), config.resume)
    if config.freeze:
        freeze_all_but_classifier(model)
    model.to(session.device, memory_format=memory_format(config.channels_last))
    ema = make_ema(model, config.ema)
    if ema and resumed:
        load_weights(ema.module, resumed["state_dict"], config.resume)
        ema.n_averaged.fill_(resumed["training_state"]["ema_updates"])
    return model, preprocessing, ema, compile_model(session.wrap(model), session.device, config.compile)


def setup(config: TrainConfig, resumed: dict | None, session: distributed.Session) -> Run:
    """Everything before the first step: output folder, data, model, optimizer and schedule."""
    out = Path(config.out)
    if session.is_main:
        check_writable(out)
    if config.report:
        require_matplotlib()  # fail before training, not after it
    dataset, left_out = find_photos(config.data, config.val_fraction, config.seed, config.exclude)
    if config.exclude:
        print(f"--exclude {config.exclude}: left out {left_out} photo(s) of {config.data}")
    if resumed and resumed["classes"] != dataset.classes:
        raise ClassifierError(
            f"{config.resume}: trained on classes {resumed['classes']}, but {config.data} now has "
            f"{dataset.classes}; resume needs the same classes (use --init to fine-tune on new ones)")
    model, preprocessing, ema, trainee = prepare_model(config, dataset.classes, resumed, out, session)
    crops = Augmentation(min_scale=config.min_scale) if config.augment else None
    cached = uses_cached_features(model)
    train_set, val_sets = load_splits(config, dataset, preprocessing, None if cached else crops, session)
    report_skipped(out, [train_set, *val_sets[:1]], session)
    check_usable(train_set, val_sets[0], config.data)
    print(f"{config.data} ({dataset.layout}): {len(train_set)} train, {len(val_sets[0])} val images, classes "
          f"{dataset.classes}; model {config.model} on {session.device}"
          + (f", {session.world_size} processes" if session.world_size > 1 else ""))
    config.batch_size = min(config.batch_size, max(1, len(train_set) // session.world_size))
    if cached and session.world_size > 1:
        raise ClassifierError("--finetune probe and last train on cached features in one process; "
                              "under torchrun use --finetune full")
    pipeline = feature_pipeline(config, model, preprocessing, crops, train_set, val_sets, session.device) if cached \
        else image_pipeline(config, trainee, preprocessing, crops, train_set, val_sets, session)
    trainer = make_trainer(config, model, pipeline, ema, session)
    return Run(config, session, out, dataset.classes, preprocessing, trainer, pipeline, val_sets)


def make_trainer(config: TrainConfig, model: nn.Module, pipeline: Pipeline, ema, session: distributed.Session) -> Trainer:
    """The optimizer, its schedule over the run's steps, and the rest of what every step uses."""
    steps = len(Batches(*pipeline.train_inputs, config.batch_size * session.world_size, drop_last=True))
    optimizer = make_optimizer(config, model)
    return Trainer(model, pipeline.forward, pipeline.prepare, optimizer, make_schedule(config, optimizer, steps),
                   grad_scaler(session.device, config.precision), ema, config, session.device, config.freeze)


def train(config: TrainConfig) -> dict:
    """Run a whole training; returns the final epoch's metrics."""
    started = time.perf_counter()
    config, resumed = restore(config)
    config = config.resolved()  # a copy: the batch size may be lowered below; leave the caller's alone
    torch.manual_seed(config.seed)
    session = distributed.start(config.device)
    config.precision = resolve_precision(config.precision, session.device)  # what checkpoints record
    run = setup(config, resumed, session)
    state = resume_training(run, resumed) if resumed else TrainState()
    with StopSignal() as stop:
        metrics = fit(run, state, stop, started)
    finish(run)
    return metrics


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


def finish(run: Run) -> None:
    """What the report reads: best.pt's predictions on the val images (and the report itself)."""
    with run.session.main_first():  # the other ranks wait: none leaves the process group while rank 0 works
        if run.session.is_main:
            val_sizes = [v.decoded() for v in run.val_sets]
            write_predictions(run.out, val_sizes, run.config.tta, run.config.device,
                              probabilities=run.best_probabilities)
            if run.config.report:
                print(f"report: {build_report(run.out)}")


def list_recipes() -> None:
    """Each model, with the flags its --pretrained recipe sets."""
    for name in list_models():
        recipe = recipes.BACKBONES.get(name, {})
        flags = " ".join(("--" if v is not False else "--no-") + k.replace("_", "-")
                         + ("" if isinstance(v, bool) else f" {','.join(map(str, v))}" if isinstance(v, tuple)
                            else f" {v}")
                         for k, v in recipe.items() if recipes.SCRATCH.get(k) != v)
        print(f"{name}  (with --pretrained: {flags})" if flags else name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train.py", description="Train an image classifier on a folder of photos.")
    add_config_flags(parser, TrainConfig, recipes.SCRATCH)
    parser.add_argument("--list-models", action="store_true", help="print the model names and their recipes, and exit")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = vars(parse_args(argv))
    if args.pop("list_models"):
        list_recipes()
        return 0
    return run_command(train, TrainConfig(**args))


if __name__ == "__main__":
    sys.exit(main())
