"""predict over big folders: images/s with 1 and 2 decode workers, and peak memory on 10x the photos.

    python -m benchmarks.predict_stream [--data DIR] [--checkpoint best.pt]

Runs `predict.py FOLDER --output results.jsonl` as a child process, on the CPU:
  - on the 1,000 photos of DIR/val/ with --workers 1 and --workers 2, for images/s;
  - on a folder of 10,000 (the same photos 10 times over, as symlinks) with --workers 2,
    to compare its peak memory (the child's maximum resident set size) with the 1,000's.
Images/s leaves out start-up (interpreter, imports, loading the model), measured as the time
of the same command on one photo. Without --checkpoint, a model with the default convnet
architecture is trained for one epoch first (its accuracy does not matter here).
The numbers replace the "predict-stream" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from benchmarks.common import write_section


def run_child(command: list[str]) -> dict:
    """Run a command in a child process: its wall seconds and peak RSS in MB."""
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage
    seconds = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{child.stderr.read().decode()[-2000:]}")
    return {"seconds": seconds, "peak_mb": usage.ru_maxrss / 1024}


def run_predict(folder: Path, checkpoint: Path, workers: int, batch_size: int, output: Path) -> dict:
    """One predict.py run: wall seconds, peak RSS in MB, results written."""
    output.unlink(missing_ok=True)
    run = run_child([sys.executable, "predict.py", str(folder), "--checkpoint", str(checkpoint), "--device",
                     "cpu", "--workers", str(workers), "--batch-size", str(batch_size), "--output", str(output)])
    return {**run, "images": sum(1 for _ in open(output))}


def link_photos(photos: list[Path], folder: Path, copies: int) -> Path:
    """folder/copy<k>/<name> -> photo, for k < copies: a big folder without using disk."""
    for k in range(copies):
        (folder / f"copy{k}").mkdir(parents=True)
        for photo in photos:
            (folder / f"copy{k}" / photo.name).symlink_to(photo)
    return folder


def train_checkpoint(data: Path, out: Path) -> Path:
    subprocess.run([sys.executable, "train.py", "--data", str(data), "--out", str(out), "--epochs", "1",
                    "--device", "cpu", "--cache-dir", str(out / "cache")], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL)
    return out / "best.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("CATSDOGS_DATA", str(REPO.parent / "shared/data/catsdogs")),
                        help="dataset with val/<class>/ photos (default: %(default)s)")
    parser.add_argument("--checkpoint", default="", help="model to run (default: train one for one epoch)")
    parser.add_argument("--batch-size", type=int, default=64, help="predict's --batch-size (default: %(default)s)")
    parser.add_argument("--photos", type=int, default=1000, help="photos in the small folder (default: %(default)s)")
    parser.add_argument("--copies", type=int, default=10, help="the big folder holds this many copies (default: %(default)s)")
    args = parser.parse_args()

    photos = sorted(Path(args.data, "val").glob("*/*.jpg"))[: args.photos]
    with tempfile.TemporaryDirectory() as temporary:
        temporary = Path(temporary)
        checkpoint = Path(args.checkpoint) if args.checkpoint else train_checkpoint(Path(args.data), temporary / "model")
        small = link_photos(photos, temporary / "small", 1)
        big = link_photos(photos, temporary / "big", args.copies)
        one = link_photos(photos[:1], temporary / "one", 1)
        output = temporary / "results.jsonl"
        startup = run_predict(one, checkpoint, 1, args.batch_size, output)["seconds"]
        imports = run_child([sys.executable, "-c", "import classifier.predict"])["peak_mb"]
        runs = {(n, w): run_predict(folder, checkpoint, w, args.batch_size, output)
                for n, w, folder in ((len(photos), 1, small), (len(photos), 2, small),
                                     (len(photos) * args.copies, 2, big))}

    rows = "\n".join(
        f"| {n:,} | {w} | {r['images']:,} | {r['seconds']:.1f} | {n / (r['seconds'] - startup):.0f} | {r['peak_mb']:.0f} |"
        for (n, w), r in runs.items())
    small_peak, big_peak = runs[(len(photos), 2)]["peak_mb"], runs[(len(photos) * args.copies, 2)]["peak_mb"]
    body = f"""\
`predict.py FOLDER --output results.jsonl --batch-size {args.batch_size} --device cpu` on the photos of
`{args.data}/val` (JPEG, mostly about 500x375), model {checkpoint.name if args.checkpoint else "a default convnet (64 px), trained one epoch"}.
Start-up (interpreter, imports, model) measured on one photo: {startup:.1f} s, left out of images/s.

| photos | --workers | results written | wall s | images/s | peak RSS MB |
|---|---|---|---|---|---|
{rows}

Peak memory on {args.copies}x the photos: {big_peak:.0f} MB against {small_peak:.0f} MB ({big_peak / small_peak:.2f}x):
decoding runs a chunk of 256 images ahead of the model, so memory does not grow with the folder.
Most of it is PyTorch itself: importing classifier.predict alone peaks at {imports:.0f} MB."""
    write_section("predict-stream", "predict: streaming a big folder", body)


if __name__ == "__main__":
    main()
