"""Estimate accuracy by k-fold cross-validation, for folders whose val split is too small to say
much (a dozen photos a class: one photo moves a class's val accuracy by 10 points or more).

Train and val photos are pooled and dealt into K folds, each class spread evenly
(data.stratified_folds). K times, a fresh model is trained on all folds but one by the same
fitting code as a normal run (fitting.fit, the recipe's settings, nothing written) and scores the
fold it never saw, after its last epoch (nothing is chosen on the held-out fold). Every photo is
thus scored once, by a model that did not train on it: the out-of-fold accuracy, overall and
per class. For a model that trains on cached features (a pretrained probe) the frozen network
runs once over the pooled photos for all K folds.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from classifier import distributed
from classifier.augment import Augmentation
from classifier.config import TrainConfig
from classifier.data import CachedImageFolder, Dataset, ImageList, stratified_folds
from classifier.features import Features, compute_features, uses_cached_features
from classifier.fitting import (Pipeline, Run, build_model, class_weights, fit, image_pipeline, load_splits,
                                make_trainer, per_class_accuracy, pipeline_on_features)
from classifier.loop import StopSignal, TrainState, make_ema
from classifier.plan import make_plan
from classifier.progress import progress

SMALL_VAL = 10  # fewer val photos of a class than this: its val accuracy says little
AUTO_FOLDS = 5


def pooled(dataset: Dataset) -> Dataset:
    """Train and val photos together, as both splits (load_splits decodes each as it would)."""
    photos = ImageList(dataset.train.paths + dataset.val.paths, dataset.train.labels + dataset.val.labels)
    return replace(dataset, train=photos, val=photos)


def subset(split: CachedImageFolder | Features, index: torch.Tensor):
    """The photos of a decoded split or of its features at `index` (a boolean mask)."""
    if isinstance(split, Features):
        return Features(split.values[index], split.labels[index], [])
    part = CachedImageFolder.__new__(CachedImageFolder)
    part.__dict__.update(split.__dict__, images=split.images[index], targets=split.targets[index])
    return part


def fold_pipeline(config: TrainConfig, model, preprocessing, inputs: tuple, held: torch.Tensor,
                  session: distributed.Session) -> Pipeline:
    """A fold's pipeline: train on the photos not `held`, evaluate on the held ones."""
    train, val = inputs
    if isinstance(train, Features):
        return pipeline_on_features(model, subset(train, ~held), [subset(v, held) for v in val], preprocessing.tta_below)
    crops = Augmentation(min_scale=config.min_scale) if config.augment else None
    return image_pipeline(config, model, preprocessing, crops, subset(train, ~held), [subset(v, held) for v in val],
                          session)


def pooled_inputs(config: TrainConfig, dataset: Dataset, session: distributed.Session):
    """Every pooled photo decoded (and, for cached features, through the frozen network) once."""
    model, preprocessing = build_model(config, dataset.classes)
    cached = uses_cached_features(model)
    crops = Augmentation(min_scale=config.min_scale) if config.augment else None
    train, val = load_splits(config, pooled(dataset), preprocessing, None if cached else crops, session)
    if not cached:
        return (train, val), train.targets, preprocessing
    views = config.views if crops else 1
    features = compute_features(model, train.decoded(), preprocessing, session.device, views, flip=views > 1,
                                policy=crops, seed=config.seed, precision=config.precision, desc="features of all views")
    evaluated = [compute_features(model, v.decoded(), preprocessing, session.device, flip=config.tta,
                                  precision=config.precision, desc="features of all") for v in val]
    return (features, evaluated), features.labels, preprocessing


def reused_inputs(run: Run | None):
    """The pooled photos' features from the run's own, train then val, when the run computed them
    as pooled_inputs would (one view of each photo at one size: the probe recipe); else None."""
    if run is None or run.pipeline.features is None:
        return None
    train, val = run.pipeline.features
    if train.values.shape[1] != 1 or len(val) != 1 or val[0].values.shape[1] != 1:
        return None
    pooled = Features(torch.cat([train.values, val[0].values]), torch.cat([train.labels, val[0].labels]),
                      train.paths + val[0].paths)
    return (pooled, [pooled]), pooled.labels, run.preprocessing


def cross_validate(config: TrainConfig, dataset: Dataset, session: distributed.Session, folds: int,
                   run: Run | None = None) -> dict:
    """The out-of-fold accuracy of the run's recipe: overall, per fold and per class. With the
    `run` it estimates, the frozen network's pass over the photos is not made twice."""
    inputs, labels, preprocessing = reused_inputs(run) or pooled_inputs(config, dataset, session)
    fold_of, predicted = stratified_folds(labels, folds, config.seed), torch.zeros_like(labels)
    for fold in progress(range(folds), f"{folds}-fold cross-validation", unit="fold"):
        held = fold_of == fold
        torch.manual_seed(config.seed + fold)
        model, _ = build_model(config, dataset.classes)
        model.to(session.device)
        pipeline = fold_pipeline(config, model, preprocessing, inputs, held, session)
        plan = make_plan(config, len(pipeline.train_inputs[1]), session.world_size)
        plan = replace(plan, evaluated=(plan.epochs,))  # evaluated once, after the last epoch
        weights = class_weights(labels[~held], len(dataset.classes), config.balance)
        trainer = make_trainer(config, plan, model, pipeline, make_ema(model, config.ema), session, weights)
        run = Run(config, session, None, dataset.classes, preprocessing, trainer, pipeline, [], plan)
        fit(run, TrainState(), StopSignal(), time.perf_counter())
        predicted[held] = run.best_probabilities.argmax(1)
    return summarize(predicted, labels, fold_of, dataset.classes)


def summarize(predicted: torch.Tensor, labels: torch.Tensor, fold_of: torch.Tensor, classes: list[str]) -> dict:
    right = (predicted == labels).float()
    per_fold = [right[fold_of == f].mean().item() for f in range(int(fold_of.max()) + 1)]
    result = {"folds": len(per_fold), "photos": len(labels), "accuracy": right.mean().item(), "per_fold": per_fold,
              "per_class": per_class_accuracy(torch.nn.functional.one_hot(predicted, len(classes)).float(), labels,
                                              classes)}
    spread = torch.tensor(per_fold).std().item() if len(per_fold) > 1 else 0.0
    print(f"{result['folds']}-fold cross-validation over {result['photos']} photos: accuracy "
          f"{result['accuracy']:.1%} (folds {min(per_fold):.0%}-{max(per_fold):.0%}, sd {spread:.1%}); per class: "
          + ", ".join(f"{name} {value:.0%}" for name, value in result["per_class"].items()))
    return result
