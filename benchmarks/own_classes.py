"""Your own classes: the no-flag pretrained recipe against a plain baseline on the same frozen features.

    python -m benchmarks.own_classes --data ../shared/data/catsdogs --breeds ../shared/data/dogbreeds \
        --neither-set data/neither_extra

The recipe is `python train.py --data FOLDER --model efficientnet_lite0 --pretrained`, run as a user
runs it; its accuracy is that of the last epoch (best.pt is chosen on val, which is the test here),
or with no split (dogbreeds) train.py's own 5-fold estimate (`--folds 5`). The baseline is
scikit-learn's LogisticRegressionCV (10 strengths, 5-fold internal cross-validation, standardized
features) on the same network's frozen pooled features, trained on the same photos and scored on
the same ones (the same folds for dogbreeds), at the recipe's 272 px center crop and at the usual
224 px after resizing the shorter side to 1.14 x 224 (256 px).

Folders:
  catsdogs   train/ (2,000) -> val/ (1,000).
  dogbreeds  146 photos of 10 breeds, no split: 5-fold cross-validation. Its breeds are ImageNet
             classes, which the backbone was trained to tell apart.
  emoji      the proxy for classes ImageNet never saw: five of Unicode's emoji categories (People &
             Body, Flags, Objects, Symbols, Travel & Places), the 64 px Noto images of
             benchmarks/neither_set.py, 100 a class to train and 100 to test (as the hidden cat-breed
             folder has), two draws (seeds 0, 1). RESULTS.md says why it is a fair proxy.
  noisy      catsdogs with owners' mistakes: 200 photos a class from train/, 20% of them in the wrong
             class folder (seeded), scored on the untouched val/; two draws.
  time       the aim's 500 photos, timed rather than scaled from a folder's size (a small folder's time
             is mostly the fixed start): 250 photos a class of catsdogs' train/, no split, as a user's
             folder is; the recipe with no flag, and with `--folds 5`.
Writes its section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import cpu_class, train_run, write_section
from classifier.crossval import pooled
from classifier.data import find_dataset, stratified_folds
from classifier.features import compute_features
from classifier.images import DecodedImages, Preprocessing, decode_images
from classifier.models import create_model, model_entry

RECIPE = ["--model", "efficientnet_lite0", "--pretrained"]
RESIZES = {"272 px center crop (the recipe's)": (272, 272), "224 px from 256 px (the usual)": (224, 256)}
EMOJI = ("People & Body", "Flags", "Objects", "Symbols", "Travel & Places")
SEEDS = (0, 1)


def features(network, paths: list[str], size: int, decoded_at: int) -> np.ndarray:
    """Frozen pooled features of each photo: decoded at `decoded_at` (shorter side, center crop),
    the middle size x size kept, through the frozen network once (features.compute_features)."""
    preprocessing = Preprocessing(size, **model_entry("efficientnet_lite0").preprocessing)
    decoded = decode_images(paths, [0] * len(paths), Preprocessing(decoded_at, "center_crop"), cache_dir=None,
                            desc=f"decoding at {decoded_at} px")
    offset = (decoded_at - size) // 2
    cropped = DecodedImages(decoded.images[..., offset:offset + size, offset:offset + size].contiguous(),
                            decoded.labels, decoded.paths)
    values = compute_features(network, cropped, preprocessing, torch.device("cpu"), precision="auto",
                              desc=f"features at {size} px").values
    return values.flatten(1).float().numpy()


def baseline(train_x: np.ndarray, train_y: list[int], test_x: np.ndarray, test_y: list[int], seed: int = 0) -> float:
    """Accuracy of standardized LogisticRegressionCV trained on train, scored on test."""
    from sklearn.linear_model import LogisticRegressionCV  # the bench extra
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=10, cv=5, max_iter=3000, random_state=seed))
    model.fit(train_x, train_y)
    return float((model.predict(test_x) == np.asarray(test_y)).mean())


def link(folder: Path, split: str, label: str, photos: list[str]) -> None:
    (folder / split / label).mkdir(parents=True, exist_ok=True)
    for i, photo in enumerate(photos):
        (folder / split / label / f"{i:04d}-{Path(photo).name}").symlink_to(Path(photo).resolve())


def emoji_folder(neither_set: Path, out: Path, seed: int, per_class: int = 100) -> Path:
    manifest = [json.loads(line) for line in (neither_set / "manifest.jsonl").read_text().splitlines()]
    for label in EMOJI:
        photos = sorted(str(neither_set / r["path"]) for r in manifest if r["source"] == "emoji-google" and r.get("group") == label)
        random.Random(f"{seed}:{label}").shuffle(photos)
        link(out, "train", label, photos[:per_class])
        link(out, "val", label, photos[per_class:2 * per_class])
    return out


def noisy_folder(data: Path, out: Path, seed: int, per_class: int = 200, wrong: float = 0.2) -> Path:
    """train/: per_class photos a class, `wrong` of each class's in the other class's folder; val/ as it is."""
    chosen = {c: sorted(str(p) for p in (data / "train" / c).iterdir()) for c in ("cat", "dog")}
    rng = random.Random(seed)
    for c, other in (("cat", "dog"), ("dog", "cat")):
        photos = rng.sample(chosen[c], per_class)
        moved = int(wrong * per_class)
        link(out, "train", c, photos[moved:])
        link(out, "train", other, photos[:moved])  # names do not collide: each class's photos are named after it
    for c in ("cat", "dog"):
        link(out, "val", c, sorted(str(p) for p in (data / "val" / c).iterdir()))
    return out


def recipe(folder: Path, out: Path, flags: list[str] = ()) -> tuple[float, float, float]:
    """(accuracy nothing was chosen on, wall seconds, share of training photos the label check flags)
    of the no-flag recipe."""
    run = train_run(str(folder), out, [*RECIPE, *flags])
    flagged = json.loads((out / "label_check.json").read_text())["share"]
    if "--folds" in flags:
        return json.loads((out / "cross_validation.json").read_text())["accuracy"], run["wall"], flagged
    return run["evaluated"][-1]["val_accuracy"], run["wall"], flagged


def split_baselines(network, folder: Path) -> dict[str, tuple[float, float]]:
    """Each resize's baseline on a train/ -> val/ folder: (accuracy, seconds for features and fit)."""
    dataset = find_dataset(folder)
    results = {}
    for name, (size, decoded_at) in RESIZES.items():
        started = time.perf_counter()
        train_x = features(network, dataset.train.paths, size, decoded_at)
        test_x = features(network, dataset.val.paths, size, decoded_at)
        accuracy = baseline(train_x, dataset.train.labels, test_x, dataset.val.labels)
        results[name] = (accuracy, time.perf_counter() - started)
    return results


def cv_baselines(network, folder: Path, folds: int = 5) -> dict[str, tuple[float, float]]:
    """Each resize's baseline over the folds train.py --folds uses (crossval.pooled, stratified_folds, seed 0)."""
    photos = pooled(find_dataset(folder, 0.2, 0)).train
    labels = torch.tensor(photos.labels)
    fold_of = stratified_folds(labels, folds, 0).numpy()
    results = {}
    for name, (size, decoded_at) in RESIZES.items():
        started = time.perf_counter()
        x, y, right = features(network, photos.paths, size, decoded_at), labels.numpy(), 0
        for fold in range(folds):
            held = fold_of == fold
            right += baseline(x[~held], y[~held].tolist(), x[held], y[held].tolist()) * held.sum()
        results[name] = (right / len(y), time.perf_counter() - started)
    return results


def timing_folder(data: Path, out: Path, per_class: int = 250) -> Path:
    """OUT/CLASS/: the first per_class photos (by name) of each class of train/, no split."""
    for c in ("cat", "dog"):
        link(out, "", c, sorted(str(p) for p in (data / "train" / c).iterdir())[:per_class])
    return out


def timing(data: Path, tmp: Path) -> str:
    """The sentence with the recipe's wall time on 500 photos, without and with --folds 5."""
    folder = timing_folder(data, tmp / "five-hundred")
    plain, folds = (train_run(str(folder), tmp / name, [*RECIPE, *flags])["wall"]
                    for name, flags in (("plain", []), ("folds", ["--folds", "5"])))
    return (f"500 photos (250 a class of catsdogs' train/, no split, as a user's folder is), timed: the recipe "
            f"with no flag {plain:.0f} s, with `--folds 5` (the estimate dogbreeds' row gives) {folds:.0f} s; "
            f"process start, decoding and the frozen network's pass included.")


def row(name: str, photos: int, recipes: list[tuple[float, float, float]], baselines: list[dict]) -> str:
    accuracy = [a for a, _, _ in recipes]
    spread = f" ({min(accuracy):.1%}-{max(accuracy):.1%})" if len(accuracy) > 1 else ""
    cells = []
    for resize in RESIZES:
        values = [b[resize][0] for b in baselines]
        cells.append(f"{np.mean(values):.1%}" + (f" ({min(values):.1%}-{max(values):.1%})" if len(values) > 1 else ""))
    best = max(np.mean([b[r][0] for b in baselines]) for r in RESIZES)
    verdict = "yes" if np.mean(accuracy) >= best else f"no ({np.mean(accuracy) - best:+.1%})"
    seconds, flagged = np.mean([s for _, s, _ in recipes]), np.mean([f for _, _, f in recipes])
    return (f"| {name} | {photos} | **{np.mean(accuracy):.1%}**{spread} | {' | '.join(cells)} | {verdict} | "
            f"{seconds:.0f} s | {flagged:.1%} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/catsdogs", help="cats and dogs, train/ and val/ (default: %(default)s)")
    parser.add_argument("--breeds", default="../shared/data/dogbreeds", help="a folder of classes, no split (default: %(default)s)")
    parser.add_argument("--neither-set", default="data/neither_extra", help="benchmarks/neither_set.py's folder (default: %(default)s)")
    parser.add_argument("--only", default="catsdogs,dogbreeds,emoji,noisy,time", help="which folders (default: %(default)s)")
    args = parser.parse_args()
    data, breeds, neither_set = (Path(p).resolve() for p in (args.data, args.breeds, args.neither_set))
    network, rows, only = create_model("efficientnet_lite0", 2, pretrained=True, finetune="probe"), [], args.only.split(",")
    timed = ""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "dogbreeds" in only:
            rows.append(row("dogbreeds (5-fold CV)", 146, [recipe(breeds, tmp / "db", ["--folds", "5"])],
                            [cv_baselines(network, breeds)]))
            write(rows)
        drawn = {"emoji": ("emoji categories (proxy), 2 draws", lambda s: emoji_folder(neither_set, tmp / f"emoji{s}", s), 1000),
                 "noisy": ("catsdogs, 20% wrong labels, 2 draws", lambda s: noisy_folder(data, tmp / f"noisy{s}", s), 1400)}
        for name, build, photos in (drawn[key] for key in drawn if key in only):
            folders = [build(seed) for seed in SEEDS]
            rows.append(row(name, photos, [recipe(f, tmp / f"{f.name}-run") for f in folders],
                            [split_baselines(network, f) for f in folders]))
            write(rows)
        if "catsdogs" in only:
            rows.append(row("catsdogs (train/ -> val/)", 3000, [recipe(data, tmp / "cd")], [split_baselines(network, data)]))
            write(rows)
        if "time" in only:
            timed = timing(data, tmp)
            write(rows, timed)


def write(rows: list[str], timed: str = "") -> None:
    """The section of RESULTS.md with the rows measured so far."""
    body = "\n".join([
        "`train.py --data FOLDER --model efficientnet_lite0 --pretrained` (no other flag; accuracy after the last "
        "epoch, or train.py's 5-fold estimate) against standardized `LogisticRegressionCV` on the same frozen "
        "features (same photos, same folds), at two resizes:", "",
        "| folder | photos | the recipe | baseline, " + " | baseline, ".join(RESIZES)
        + " | recipe >= best baseline | recipe wall time | training photos the label check flags |",
        "|---|---|---|" + "---|" * len(RESIZES) + "---|---|---|", *rows, "", *([timed, ""] if timed else []),
        "Why the emoji folder stands in for a user's own classes: its classes are not ImageNet's (Unicode's "
        "categories cut across ImageNet's objects: a car and a hotel are both \"Travel & Places\", a crown is "
        "\"Objects\" and a trophy \"Activities\"), the backbone was never trained to tell them apart, and the "
        "boundaries are someone else's judgement, as owners' labels are; 100 photos a class to train and 100 to "
        "test, as the hidden cat-breed folder has. Where it differs: drawings, not photos, and labels without "
        "mistakes; the noisy catsdogs folder adds the mistakes (a fifth of each class in the other's folder), "
        "and dogbreeds shows the ImageNet-class case where any method reaches 99%."])
    write_section("own_classes", f"Your own classes: the recipe against LogisticRegressionCV ({cpu_class()})", body)


if __name__ == "__main__":
    main()
