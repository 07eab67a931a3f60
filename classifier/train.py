"""Train a classifier: `python train.py --data DIR` (every flag: `python train.py --help`).

    train(config)
      settings: resume? -> config.resolved() (the recipe, the precision; once)
      set up:   data (decoded once) -> model -> pipeline -> plan (epochs, batch; plan.py) -> optimizer, schedule, EMA
      budget:   with --time-budget, the plan shortened to what fits (budget.py)
      estimate: k-fold cross-validation when val is too small to say much (crossval.py)
      fit:      train_one_epoch -> validate -> log -> save, epoch after epoch (fitting.fit)
      finish:   val_predictions.jsonl (and the report with --report)

Every event of the run (start, step, epoch, end, stopped, error) goes to OUT/events.jsonl and to
the `on_event` callable a caller passes; the step parts are loop.py; settings are config.py's
TrainConfig, filled from recipes.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from classifier import budget, distributed, downloads, recipes
from classifier.checks import confident_learning, out_of_fold_probabilities
from classifier.augment import Augmentation
from classifier.checkpoint import load_checkpoint
from classifier.cli import add_config_flags, given_flags, run_command
from classifier.config import TrainConfig
from classifier.crossval import AUTO_FOLDS, SMALL_VAL, cross_validate
from classifier.data import CachedImageFolder, Dataset, check_usable, find_photos
from classifier.errors import ClassifierError
from classifier.features import uses_cached_features
from classifier.files import check_free_space, check_writable, load_weights
from classifier.fitting import (Run, Stopped, build_model, check_solver, class_weights, feature_pipeline, fit,
                                freeze_all_but_classifier, image_pipeline, load_splits, make_trainer)
from classifier.loop import StopSignal, TrainState, make_ema
from classifier.models import list_models
from classifier.plan import Plan, make_plan
from classifier.plots import require_matplotlib
from classifier.report import build_report
from classifier.runs import EventLog, carry_over, relocated, write_predictions
from classifier.runtime import compile_model, memory_format


def report_skipped(out: Path, splits: list[CachedImageFolder], session: distributed.Session) -> None:
    """List the unreadable files of this run in OUT/skipped.txt (never an earlier run's)."""
    skipped = [reason for split in splits for _, reason in split.skipped]
    if session.is_main:
        (out / "skipped.txt").unlink(missing_ok=True)
        if skipped:
            (out / "skipped.txt").write_text("".join(f"{reason}\n" for reason in skipped))
            print(f"skipped {len(skipped)} unreadable image(s), listed in {out / 'skipped.txt'}")


RESUME_FLAGS = frozenset({"data", "out"})  # what a resumed run takes from its command line: where things are now


def restore(config: TrainConfig, given: frozenset[str] = frozenset()) -> tuple[TrainConfig, dict | None]:
    """With --resume, the settings and the checkpoint of the interrupted run: its own settings,
    its folders as they are now (runs.relocated: a moved or copied run finds its photos),
    and the RESUME_FLAGS among `given` (the settings the command line names)."""
    if not config.resume:
        return config, None
    resumed = load_checkpoint(config.resume)
    if "training_state" not in resumed:
        raise ClassifierError(f"{config.resume}: holds no training state; resume from a last.pt")
    ignored = sorted(given - RESUME_FLAGS - {"resume"})
    if ignored:
        print(f"--resume keeps the run's own settings: {', '.join('--' + n.replace('_', '-') for n in ignored)} "
              f"ignored (only --data and --out apply)")
    settings = {**relocated(resumed, config.resume), **{name: getattr(config, name) for name in given & RESUME_FLAGS}}
    data = settings["data"]
    if not data.startswith(downloads.PREFIX) and not Path(data).is_dir():
        raise ClassifierError(f"{config.resume}: its photo folder {data} is not there (moved, or on another "
                              f"machine); pass --data DIR to say where its photos are now")
    return TrainConfig.from_dict({**settings, "resume": config.resume}), resumed


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


def describe_data(config: TrainConfig, dataset: Dataset, train: CachedImageFolder, val: CachedImageFolder,
                  session: distributed.Session) -> None:
    """One line about the data; a warning when classes differ in size or val is too small to say much."""
    print(f"{config.data} ({dataset.layout}): {len(train)} train, {len(val)} val images, classes "
          f"{dataset.classes}; model {config.model} on {session.device}"
          + (f", {session.world_size} processes" if session.world_size > 1 else ""))
    counts = torch.bincount(train.targets, minlength=len(dataset.classes)).tolist()
    if max(counts) > 1.5 * min(counts):
        sizes = ", ".join(f"{name} {count}" for name, count in zip(dataset.classes, counts))
        print(f"classes differ in size ({sizes}; {max(counts) / max(min(counts), 1):.0f}:1): "
              + ("the loss weighs every class alike (--no-balance: by photo)" if config.balance
                 else "--no-balance: every photo weighs the same, so the larger classes dominate"))
    small = [name for i, name in enumerate(dataset.classes) if (val.targets == i).sum() < SMALL_VAL]
    if small:
        print(f"warning: fewer than {SMALL_VAL} val photos of {', '.join(small[:5])}{' ...' if len(small) > 5 else ''}: "
              f"their val accuracy moves by 10 points or more per photo; see the cross-validation estimate (--folds)")


def planned(config: TrainConfig, examples: int, resumed: dict | None, world_size: int) -> Plan:
    """The run's plan: a resumed run's own (older checkpoints kept it in their settings), or a new one."""
    if not resumed:
        plan = make_plan(config, examples, world_size)
        if plan.reason:
            print(plan.reason)
        return plan
    if "plan" in resumed:
        return Plan.from_dict(resumed["plan"])
    return make_plan(config, examples, world_size, epochs=resumed["config"]["epochs"])


def setup(config: TrainConfig, resumed: dict | None, session: distributed.Session,
          on_event: Callable[[dict], None] | None) -> Run:
    """Everything before the first step: output folder, data, model, pipeline, plan, optimizer and schedule."""
    out = Path(config.out)
    if session.is_main:
        check_writable(out)
        if resumed:
            carry_over(relocated(resumed, config.resume)["out"], out)
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
    describe_data(config, dataset, train_set, val_sets[0], session)
    if cached and session.world_size > 1:
        raise ClassifierError("--finetune probe and last train on cached features in one process; "
                              "under torchrun use --finetune full")
    pipeline = feature_pipeline(config, model, preprocessing, crops, train_set, val_sets, session.device) if cached \
        else image_pipeline(config, trainee, preprocessing, crops, train_set, val_sets, session)
    if config.optimizer == "lbfgs":
        check_solver(config, pipeline)
    plan = planned(config, len(pipeline.train_inputs[1]), resumed, session.world_size)
    weights = class_weights(train_set.targets, len(dataset.classes), config.balance)
    trainer = make_trainer(config, plan, model, pipeline, ema, session, weights)
    return Run(config, session, out, dataset.classes, preprocessing, trainer, pipeline, val_sets, plan, on_event)


def train(config: TrainConfig, on_event: Callable[[dict], None] | None = None,
          given: frozenset[str] = frozenset()) -> dict:
    """Run a whole training; returns the final epoch's metrics. Every event of the run goes to
    OUT/events.jsonl and to on_event (fitting.py's Run.emit: start, plan, step, epoch, end, stopped, error).
    given: the settings the command line names (with --resume, its --data and --out win)."""
    started = time.perf_counter()
    config, resumed = restore(config, given)
    config = config.resolved()
    torch.manual_seed(config.seed)
    session = distributed.start(config.device)
    events = EventLog(Path(config.out), append=bool(resumed), also=on_event) if session.is_main else None
    try:
        run = setup(config, resumed, session, events)
        return fit_and_finish(run, resumed, started)
    except ClassifierError as error:
        if events and not isinstance(error, Stopped):
            events({"event": "error", "time": round(time.time(), 3), "message": str(error)})
        raise


def fit_and_finish(run: Run, resumed: dict | None, started: float) -> dict:
    """Cross-validation when wanted, the time budget's plan, the epochs, then what the report reads."""
    config, session = run.config, run.session
    folds = wanted_folds(config, run)
    if folds and not resumed:
        run.cross_validation = cross_validate(config, find_photos(config.data, config.val_fraction, config.seed,
                                                                  config.exclude)[0], session, folds, run)
        if session.is_main:
            (run.out / "cross_validation.json").write_text(json.dumps(run.cross_validation, indent=1) + "\n")
    run.label_check = label_check(run) if not resumed else resumed.get("label_check")
    if config.time_budget and not resumed:  # a resumed run keeps its plan
        run.use_plan(budget.plan_in_budget(run, config.time_budget, started))
    state = resume_training(run, resumed) if resumed else TrainState()
    with StopSignal() as stop:
        metrics = fit(run, state, stop, started)
    finish(run)
    say_label_check(run)
    return metrics


NOISY_SHARE = 0.05  # more training photos than this look like another class: the labels look noisy
LABEL_FOLDS = 5


def label_check(run: Run) -> dict | None:
    """With cached features (a pretrained probe): the audit's label check on the training photos.
    A logistic regression fitted on the other folds scores each photo; confident learning flags
    those that look like another class (classifier/checks.py). None for other runs."""
    if not uses_cached_features(run.trainer.model) or not run.session.is_main:
        return None
    inputs, labels = run.pipeline.train_inputs
    views = run.config.views if run.config.augment else 1  # feature_pipeline's views of each photo, in a row
    features, labels = inputs[::views].float().mean((-2, -1)), labels[::views]
    if len(labels.unique()) < 2 or torch.bincount(labels).min() < LABEL_FOLDS:
        return None
    probabilities = out_of_fold_probabilities(features, labels, len(run.classes), LABEL_FOLDS, run.config.seed)
    flagged, _ = confident_learning(probabilities, labels)
    return {"photos": len(labels), "flagged": int(flagged.sum()), "share": round(flagged.float().mean().item(), 4),
            "noisy": flagged.float().mean().item() > NOISY_SHARE}


def say_label_check(run: Run) -> None:
    check = run.label_check
    if check and run.session.is_main:
        print(f"labels: {check['flagged']} of {check['photos']} training photos ({check['share']:.1%}) look like "
              "another class to a probe that never saw them"
              + (f"; the labels look noisy (over {NOISY_SHARE:.0%}): review them with `python -m classifier.audit "
                 f"{run.config.data}`" if check["noisy"] else ""))
        if run.out is not None:
            (run.out / "label_check.json").write_text(json.dumps(check) + "\n")


def wanted_folds(config: TrainConfig, run: Run) -> int:
    """--folds, or with -1: 5 when val is small for some class and the model trains on cached features."""
    if config.folds >= 0:
        return config.folds
    small = any((run.val_sets[0].targets == i).sum() < SMALL_VAL for i in range(len(run.classes)))
    return AUTO_FOLDS if small and uses_cached_features(run.trainer.model) else 0


def finish(run: Run) -> None:
    """What the report reads: best.pt's predictions on the val images (and the report itself)."""
    with run.session.main_first():  # the other ranks wait: none leaves the process group while rank 0 works
        if run.session.is_main:
            best = load_checkpoint(run.out / "best.pt")
            print(f"best.pt: epoch {best['epoch']}, val accuracy {best['metrics']['val_accuracy']:.2%}"
                  + ("; per class: " + ", ".join(f"{name} {value:.0%}" for name, value in
                                                  best["metrics"]["val_per_class"].items())
                     if len(run.classes) > 2 else ""))
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


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="train.py", description="Train an image classifier on a folder of photos.")
    add_config_flags(parser, TrainConfig, recipes.SCRATCH)
    parser.add_argument("--list-models", action="store_true", help="print the model names and their recipes, and exit")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    command = parser()
    args = vars(command.parse_args(argv))
    if args.pop("list_models"):
        list_recipes()
        return 0
    return run_command(train, TrainConfig(**args), None, given_flags(command, argv))


if __name__ == "__main__":
    sys.exit(main())
