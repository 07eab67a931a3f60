"""Command-line interfaces: argument parsing, printing, exit status; nothing else.

Each *_main(argv) returns the process exit status: 0 success, 1 a ClassifierError (printed
on one line), 2 bad arguments (argparse's own convention), 130 Ctrl-C outside a training loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from classifier.errors import ClassifierError
from classifier.runtime import PRECISIONS


def _parse_ints(text: str) -> tuple:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}")


def _add_config_flags(parser: argparse.ArgumentParser, config_class) -> None:
    """One flag per dataclass field: --field-name, typed and documented from the field."""
    for f in fields(config_class):
        default = f.default if f.default is not MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata["help"] + " (default: %(default)s)"
        sample = f.metadata.get("fallback", default)  # a model-dependent field is typed by its fallback
        if "fallback" in f.metadata:
            help_text = f.metadata["help"] + f" (default: the model's recommended value, else {sample})"
        if isinstance(sample, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif isinstance(sample, tuple):
            shown = ",".join(map(str, sample)) or "none"
            parser.add_argument(flag, type=_parse_ints, default=default, metavar="N,N,...",
                                help=help_text.replace("%(default)s", shown).replace(f"else {sample}", f"else {shown}"))
        else:
            parser.add_argument(flag, type=type(sample), default=default,
                                choices=f.metadata.get("choices"), help=help_text)


def _run(command, *args) -> int:
    """Run a command; a ClassifierError or Ctrl-C outside training's own handling is one line."""
    try:
        result = command(*args)
    except ClassifierError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C); checkpoints already written are intact", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`predict.py photos/ | head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 141
    return result if isinstance(result, int) else 0


def train_main(argv: list[str] | None = None) -> int:
    from classifier.models import list_models, model_entry
    from classifier.train import TrainConfig, train

    parser = argparse.ArgumentParser(
        prog="train.py", description="Train an image classifier on a folder of photos.")
    _add_config_flags(parser, TrainConfig)
    parser.add_argument("--list-models", action="store_true", help="print the model names and exit")
    args = vars(parser.parse_args(argv))
    if args.pop("list_models"):
        for name in list_models():
            flags = " ".join(("--" if v is not False else "--no-") + k.replace("_", "-")
                             + ("" if isinstance(v, bool) else f" {','.join(map(str, v))}" if isinstance(v, tuple)
                                else f" {v}")
                             for k, v in model_entry(name).recommended.items())
            print(f"{name}  (with --pretrained: {flags})" if flags else name)
        return 0
    return _run(train, TrainConfig(**args))


def predict_main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from classifier.predict import Classifier, completed_paths, expand_paths, format_result

    parser = argparse.ArgumentParser(
        prog="predict.py", description="Classify photos with a trained checkpoint.")
    parser.add_argument("paths", nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--checkpoint", default="checkpoints/best.pt", help="checkpoint to use (default: %(default)s)")
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
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="(default: %(default)s)")
    parser.add_argument("--precision", default="auto", choices=PRECISIONS,
                        help="of the forward pass; auto: bf16 where the device computes it natively (CUDA, "
                             "CPUs with AVX512-BF16 or AMX), else fp32 (default: %(default)s)")
    parser.add_argument("--explain", metavar="DIR", default="",
                        help="also write a Grad-CAM heatmap for each image, DIR/<image name>.png (needs matplotlib)")
    args = parser.parse_args(argv)

    def run() -> int:
        classifier = Classifier.load(args.checkpoint, args.device, args.precision)
        if args.explain:
            from classifier.explain import HeatmapWriter

            heatmaps = HeatmapWriter(classifier, args.explain)
        done = completed_paths(args.output) if args.output else set()
        paths = [path for path in expand_paths(args.paths) if path not in done]
        failures = 0
        results = classifier.predict_paths(paths, args.batch_size, args.tta, args.workers or None)
        progress = tqdm(results, total=len(paths), unit="img", desc="predict", file=sys.stderr, disable=None)
        with open(args.output, "a") if args.output else contextlib.nullcontext() as saved:
            for result in progress:
                failures += "error" in result
                if args.explain and "error" not in result:
                    result["heatmap"] = str(heatmaps.write(result["path"]))
                if saved:
                    saved.write(json.dumps(result) + "\n")
                    saved.flush()
                    if "error" not in result:
                        continue
                    line, stream = format_result(result), sys.stderr
                else:
                    line = json.dumps(result) if args.json else format_result(result)
                    stream = sys.stderr if "error" in result and not args.json else sys.stdout
                with tqdm.external_write_mode(file=sys.stderr):  # the bar steps aside for the line
                    print(line, file=stream, flush=True)
        if args.output:
            print(f"{len(paths) - failures} classified, {failures} unreadable, {len(done)} already in "
                  f"{args.output}", file=sys.stderr)
        return 1 if failures else 0

    return _run(run)


def report_main(argv: list[str] | None = None) -> int:
    from classifier.report import build_report

    parser = argparse.ArgumentParser(
        prog="python -m classifier.report",
        description="Write an HTML report of a training run: loss, accuracy and learning-rate "
                    "curves, confusion matrix, per-class precision / recall / F1, reliability "
                    "diagram, and galleries of confident mistakes and unsure correct answers.")
    parser.add_argument("run_dir", help="a training output folder (train.py --out): metrics.jsonl, "
                                        "val_predictions.jsonl or best.pt")
    parser.add_argument("--out", default="", help="folder for report.html, its PNGs and report.json (default: RUN_DIR/report)")
    parser.add_argument("--gallery", type=int, default=8, help="images in each gallery (default: %(default)s)")
    args = parser.parse_args(argv)
    return _run(lambda: print(f"wrote {build_report(args.run_dir, args.out or None, args.gallery)}"))


def explain_main(argv: list[str] | None = None) -> int:
    from classifier.explain import class_index, class_summary, explain
    from classifier.predict import Classifier

    parser = argparse.ArgumentParser(
        prog="python -m classifier.explain",
        description="Show where a trained network looks in a photo (Grad-CAM) and what its layers "
                    "learned: feature maps of an early, a middle and a late layer, and the first "
                    "layer's filters (an MLP's first-layer weights as images).")
    parser.add_argument("image", help="the photo to explain")
    parser.add_argument("--checkpoint", default="checkpoints/best.pt", help="checkpoint to use (default: %(default)s)")
    parser.add_argument("--out", default="", help="folder for the PNGs (default: explain/<image name>)")
    parser.add_argument("--target", default=None, metavar="CLASS",
                        help="class whose evidence the heatmap shows (default: the predicted class)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="(default: %(default)s)")
    args = parser.parse_args(argv)

    def run():
        classifier = Classifier.load(args.checkpoint, args.device, fuse=False)
        out = args.out or f"explain/{Path(args.image).stem}"
        explanation, written = explain(classifier, args.image, out,
                                       class_index(classifier.classes, args.target))
        print(f"{class_summary(classifier.classes, explanation.probabilities)}  {args.image}")
        for path in written:
            print(f"wrote {path}")

    return _run(run)
