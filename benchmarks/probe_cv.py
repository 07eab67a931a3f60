"""Choose the pretrained probe's settings by cross-validation on train/ alone, with the shipped loop.

    python -m benchmarks.probe_cv --data ../shared/data/catsdogs

For each image size the frozen EfficientNet-Lite0 runs once over the training photos (each photo
and its mirror image, center crops, as the recipe caches them; features.compute_features). Then
for each variant (training views, test-time views, probe settings) the probe is trained on all
folds but one by the library's own loop (fitting.fit: the recipe's optimizer, schedule and loss)
and scored on the held-out fold. val/ is never read. Writes its section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace

import torch

from benchmarks.common import write_section
from classifier import distributed, fitting
from classifier.config import TrainConfig
from classifier.data import find_dataset
from classifier.features import Features, compute_features
from classifier.images import Preprocessing, decode_images
from classifier.loop import StopSignal, TrainState
from classifier.models import create_model
from classifier.plan import make_plan

GRID = {"epochs": (10, 30), "lr": (3e-4, 1e-3, 3e-3), "weight_decay": (0.0, 0.05, 0.5), "label_smoothing": (0.0, 0.1)}


def pooled_features(network, paths: list[str], labels: list[int], size: int) -> Features:
    """Each photo and its mirror image through the frozen network (a probe's features come
    averaged over each map: [N, 2, C, 1, 1])."""
    preprocessing = Preprocessing(size, "center_crop")
    decoded = decode_images(paths, labels, preprocessing, cache_dir=None, desc=f"decoding at {size} px")
    return compute_features(network, decoded, preprocessing, torch.device("cpu"), views=2, flip=True,
                            precision="auto", desc=f"features at {size} px")


def subset(features: Features, index: torch.Tensor, views: int) -> Features:
    return Features(features.values[index][:, :views], features.labels[index], [])


def cross_validate(features: Features, folds: int, size: int, train_views: int = 2, test_views: int = 2,
                   test_sizes: tuple[Features, ...] = (), **settings) -> int:
    """Errors over all held-out folds of the probe the library trains with `settings`."""
    fold_of, errors = torch.arange(len(features)) % folds, 0
    session = distributed.start("cpu")
    for fold in range(folds):
        fit, held = fold_of != fold, fold_of == fold
        config = TrainConfig(model="efficientnet_lite0", pretrained=True, image_size=size, device="cpu",
                             tta=test_views > 1, **settings).resolved()
        model = create_model("efficientnet_lite0", 2, pretrained=True, finetune="probe")
        pipeline = fitting.pipeline_on_features(model, subset(features, fit, train_views),
                                              [subset(f, held, test_views) for f in (features, *test_sizes)])
        plan = make_plan(config, len(pipeline.train_inputs[1]))
        plan = replace(plan, evaluated=(plan.epochs,))  # evaluated once, after the last epoch
        trainer = fitting.make_trainer(config, plan, model, pipeline, None, session)
        run = fitting.Run(config, session, None, ["cat", "dog"], Preprocessing(size), trainer, pipeline, [], plan)
        metrics = fitting.fit(run, TrainState(), StopSignal(), time.perf_counter())
        errors += round((1 - metrics["val_accuracy"]) * int(held.sum()))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="its train/ is used, val/ never (default: %(default)s)")
    parser.add_argument("--sizes", default="224,256,272,320", help="image sizes to compare (default: %(default)s)")
    parser.add_argument("--folds", type=int, default=4, help="cross-validation folds (default: %(default)s)")
    parser.add_argument("--grid", action="store_true", help="also every combination of GRID's probe settings at each size")
    args = parser.parse_args()
    train_list = find_dataset(args.data).train
    network = create_model("efficientnet_lite0", 2, pretrained=True, finetune="probe")
    sizes = [int(s) for s in args.sizes.split(",")]
    features = {s: pooled_features(network, train_list.paths, train_list.labels, s) for s in sizes}
    n, rows = len(train_list), []

    def row(name: str, errors: int) -> None:
        rows.append(f"| {name} | {errors} | {1 - errors / n:.2%} |")
        print(rows[-1], flush=True)

    for size in sizes:
        for train_views, test_views in ((1, 1), (2, 1), (1, 2), (2, 2)):
            row(f"{size} px, {train_views} training view(s), {test_views} test view(s)",
                cross_validate(features[size], args.folds, size, train_views, test_views))
        for larger in (s for s in sizes if s > size):
            row(f"{size} px, test-time size {larger} too (2 views each)",
                cross_validate(features[size], args.folds, size, test_sizes=(features[larger],)))
        for values in itertools.product(*GRID.values()) if args.grid else ():
            settings = dict(zip(GRID, values))
            row(f"{size} px, {settings}", cross_validate(features[size], args.folds, size, **settings))
    body = "\n".join([f"{n} photos of train/, {args.folds}-fold cross-validation errors of the probe trained by "
                      "fitting.fit (the recipe's settings unless named), val/ not used:", "",
                      "| variant | errors | accuracy |", "|---|---|---|", *rows])
    write_section("probe_cv", "Pretrained probe: settings by cross-validation on train/", body)


if __name__ == "__main__":
    main()
