"""Adaptive test-time views: accuracy and speed when only unsure photos get the extra views.

    python -m benchmarks.adaptive_tta --checkpoint checkpoints/best.pt --data ../shared/data/catsdogs

A from-scratch checkpoint evaluates each photo at its image size and at a larger test-time size,
each with its mirror image (4 views). With tta_below B, the other 3 views run only for the photos
whose first view's top probability is below B (tta.average). For each B: val accuracy, the share
of photos that got the extra views, and images/s of the forward passes alone (the photos decoded
once beforehand at every size, as predict decodes them). Then `predict.py --json` over val/ as a
user runs it (process start included) with every view for every photo, with tta_below 0.95
written into a copy of the checkpoint (what the recipe now stores), and with --no-tta. Writes its
section of RESULTS.md, per CPU class.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from benchmarks.common import class_tag, cpu_class, run_command, write_section
from classifier.checkpoint import load_checkpoint
from classifier.files import atomic_save
from classifier.inference import Classifier
from classifier.tta import decode_sizes

THRESHOLDS = (1.0, 0.99, 0.95, 0.9, 0.8)


def evaluate(classifier: Classifier, images: list[torch.Tensor], tta: bool, batch_size: int = 64) -> tuple[torch.Tensor, float]:
    """Probabilities of every photo, and images/s of the forward passes."""
    started = time.perf_counter()
    probabilities = torch.cat([classifier.probabilities([x[i:i + batch_size] for x in images], tta)
                               for i in range(0, len(images[0]), batch_size)])
    return probabilities, len(images[0]) / (time.perf_counter() - started)


def predict_rates(checkpoint: str, folder: Path, count: int) -> list[str]:
    """Rows: predict.py's images/s and accuracy over `folder`, process start included."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        saved = load_checkpoint(checkpoint)
        variants = {}
        for below in (1.0, 0.95):
            saved["preprocessing"]["tta_below"] = below
            variants[f"tta_below {below:g}"] = (str(Path(tmp) / f"{below}.pt"), [])
            atomic_save(saved, variants[f"tta_below {below:g}"][0])
        variants["--no-tta"] = (checkpoint, ["--no-tta"])
        for name, (path, flags) in variants.items():
            wall, out = run_command(["predict.py", str(folder), "--checkpoint", path, "--json", *flags])
            results = [json.loads(line) for line in out.splitlines()]
            right = sum(r.get("label") == Path(r["path"]).parent.name for r in results) / len(results)
            rows.append(f"| {name} | {right:.2%} | {count / wall:.0f} |")
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/best.pt", help="a from-scratch checkpoint (default: %(default)s)")
    parser.add_argument("--data", default="../shared/data/catsdogs", help="dataset whose val/ is scored (default: %(default)s)")
    args = parser.parse_args()
    classifier = Classifier.load(args.checkpoint, "cpu")
    paths = sorted(str(p) for p in (Path(args.data) / "val").rglob("*") if p.is_file())
    labels = torch.tensor([classifier.classes.index(Path(p).parent.name) for p in paths])
    images = [decoded.images for decoded in decode_sizes(paths, labels.tolist(), classifier.preprocessing, True)]
    trained = classifier.preprocessing
    first, one_view = evaluate(classifier, images[:1], False)
    rows = [f"| one view (--no-tta) | {(first.argmax(1) == labels).float().mean():.2%} | 0% | {one_view:.0f} |"]
    for below in THRESHOLDS:
        classifier.preprocessing = replace(trained, tta_below=below)
        probabilities, speed = evaluate(classifier, images, True)
        unsure = (first.amax(1) < below).float().mean() if below < 1 else torch.tensor(1.0)
        rows.append(f"| tta_below {below:g}{' (the checkpoint)' if below == trained.tta_below else ''} | "
                    f"{(probabilities.argmax(1) == labels).float().mean():.2%} | {unsure:.0%} | {speed:.0f} |")
        print(rows[-1], flush=True)
    predicted = predict_rates(str(Path(args.checkpoint).resolve()), Path(args.data).resolve() / "val", len(paths))
    sizes = " + ".join(str(p) for p in [trained.image_size, *trained.tta_sizes])
    body = "\n".join([
        f"`{args.checkpoint}`: {len(paths)} val photos, views at {sizes} px with mirror images; images/s of the "
        "forward passes alone (decoded beforehand).", "",
        "| views | val accuracy | photos with the extra views | images/s |", "|---|---|---|---|", *rows, "",
        f"`predict.py VAL --json` as a user runs it, process start included ({len(paths)} photos):", "",
        "| views | accuracy (neither counts as wrong) | images/s |", "|---|---|---|", *predicted])
    write_section(f"adaptive_tta-{class_tag()}", f"Adaptive test-time views ({cpu_class()})", body)


if __name__ == "__main__":
    main()
