"""Classify photos from the command line: `python predict.py PHOTOS... [--json]`.

    python predict.py cat.jpg photos/ --checkpoint checkpoints/best.pt
    python predict.py photos/ --output results.jsonl      # streams, resumes if interrupted

The model itself, its preprocessing and TTA live in inference.py (Classifier); this module
finds the files, prints or appends one result per photo, and sets the exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from classifier.cli import add_device_flags, run_command
from classifier.errors import ClassifierError
from classifier.gradcam import HeatmapWriter
from classifier.images import walk_images
from classifier.inference import Classifier
from classifier.progress import progress


def expand_paths(paths: Iterable[str]) -> Iterator[str]:
    """Files as given; folders expanded recursively to the image files inside."""
    for path in paths:
        if Path(path).is_dir():
            yield from walk_images(Path(path))
        else:
            yield path


def completed_paths(output: str | Path) -> set[str]:
    """The paths already in a results file (one JSON object per line, as --output writes it),
    so that a rerun skips them. A last line cut short by a killed run is removed first."""
    output, done, complete = Path(output), set(), 0
    if not output.exists():
        return done
    with open(output, "rb") as file:
        for number, line in enumerate(file, 1):
            if not line.endswith(b"\n"):
                break  # the last line of an interrupted write: that image is classified again
            try:
                done.add(json.loads(line)["path"])
            except (ValueError, KeyError, TypeError):
                raise ClassifierError(f"{output}, line {number}: not a result written by predict; "
                                      f"choose another --output file") from None
            complete += len(line)
    if complete < output.stat().st_size:
        with open(output, "r+b") as file:
            file.truncate(complete)
    return done


def format_result(result: dict) -> str:
    """One readable line: label, every class probability, path."""
    if "error" in result:
        return f"error  {result['error']}"
    probabilities = "  ".join(f"{c} {p:.3f}" for c, p in result["probabilities"].items())
    return f"{result['label']:<8} {probabilities}  {result['path']}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="predict.py", description="Classify photos with a trained checkpoint.")
    parser.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--checkpoint", default="checkpoints/best.pt", help="checkpoint to use, .pt or .onnx (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=0, help="decoding threads, 0 for one per core (default: %(default)s)")
    parser.add_argument("--output", metavar="FILE.jsonl", default="",
                        help="append one JSON object per image to FILE instead of printing; a rerun "
                             "skips the images already in FILE, so an interrupted run resumes")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                        help="average each image with its mirror image, and with the image decoded at the "
                             "checkpoint's test-time sizes if it has any; --no-tta: one pass, faster, less "
                             "accurate (default: as training evaluated the checkpoint, which is what its "
                             "accuracy, temperature and neither threshold were measured on)")
    add_device_flags(parser)
    parser.add_argument("--explain", metavar="DIR", default="",
                        help="also write a Grad-CAM heatmap for each image, DIR/<image name>.png (needs matplotlib)")
    return parser.parse_args(argv)


def emit(result: dict, args: argparse.Namespace, saved) -> None:
    """Print a result (or append it to --output), keeping the progress bar out of the way."""
    if saved:
        saved.write(json.dumps(result) + "\n")
        saved.flush()
        if "error" not in result:
            return
        line, stream = format_result(result), sys.stderr
    else:
        line = json.dumps(result) if args.json else format_result(result)
        stream = sys.stderr if "error" in result and not args.json else sys.stdout
    with tqdm.external_write_mode(file=sys.stderr):  # a bar on the terminal steps aside for the line
        print(line, file=stream, flush=True)


def classify(args: argparse.Namespace) -> int:
    classifier = Classifier.load(args.checkpoint, args.device, args.precision)
    heatmaps = HeatmapWriter(classifier, args.explain) if args.explain else None
    done = completed_paths(args.output) if args.output else set()
    paths = [path for path in expand_paths(args.paths) if path not in done]
    failures = 0
    results = classifier.predict_paths(paths, args.batch_size, args.tta, args.workers or None)
    with open(args.output, "a") if args.output else contextlib.nullcontext() as saved:
        for result in progress(results, "predict", total=len(paths), leave=True):
            failures += "error" in result
            if heatmaps and "error" not in result:
                result["heatmap"] = str(heatmaps.write(result["path"]))
            emit(result, args, saved)
    if args.output:
        print(f"{len(paths) - failures} classified, {failures} unreadable, {len(done)} already in "
              f"{args.output}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    return run_command(classify, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
