"""The studio as a user meets it: seconds from "Train" to a usable model on 20 photos a class,
how often the page hears from a training run, importing 10,000 photos (time, and the server's
memory), and the live prediction rate of the Try it tab.

    python -m benchmarks.studio [--data ../shared/data/catsdogs] [--photos 10000]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python -m benchmarks.studio      # the AVX2 class

Starts `python -m classifier.studio --root TMP/root --import-from TMP` (a real server process; its
jobs inherit the environment, so the emulation variables reach training) and asks it what the page
asks, over HTTP:
  1. a project of the first 20 photos of train/cat and train/dog; POST .../runs with the pretrained
     recipe and no setting changed (what the Train button sends), timed until the run has finished
     (best.pt and its val predictions written) and until the first best.pt (the first evaluation:
     Try it and Export work from then on); meanwhile the run's event stream is read as the page
     reads it, and the gaps between its updates (messages arriving together count once) are the
     page's update interval;
  2. --photos photos (half cats, half dogs) made from the real ones (mirrored, cropped, recoloured,
     re-encoded) in a temporary folder outside the repository, imported with POST .../import: the
     time, the server's resident memory before and after (VmRSS, and its peak VmHWM), and the time of
     a page of 100 photos and of a thumbnail;
  3. the live rate: JPEG frames of 320 px (what the page's webcam loop sends), one after the other as
     the page does, to a from-scratch convnet trained on the small project (--epochs 3) and to the
     pretrained model: answers a second.
The numbers replace the "studio" section of benchmarks/RESULTS.md for this CPU class.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx2
from PIL import Image, ImageEnhance, ImageOps

from benchmarks.common import REPO, class_tag, cpu_class, write_section

SMALL = 20  # photos a class: "a usable model from 20 photos a class"
FRAME = 320  # pixels, the longer side of the page's webcam frames
UPDATE_GAP = 0.05  # seconds: messages closer than this arrived in one update of the page


def start_studio(root: Path, sources: Path) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "classifier.studio", "--root", str(root), "--port", "0",
                                "--import-from", str(sources)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    address = re.search(r"http://\S+/", line)
    if not address:
        process.kill()
        raise SystemExit(f"the studio did not start: {line.strip()}")
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return process, address.group().rstrip("/")


def memory(pid: int) -> dict:
    """The process's resident memory now and at its peak, MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {key: int(re.search(rf"{key}:\s+(\d+) kB", status).group(1)) / 1024 for key in ("VmRSS", "VmHWM")}


def small_folder(data: Path, out: Path) -> Path:
    for kind in ("cat", "dog"):
        (out / kind).mkdir(parents=True, exist_ok=True)
        for photo in sorted((data / "train" / kind).iterdir(), key=lambda p: int(p.name.split(".")[1]))[:SMALL]:
            shutil.copy(photo, out / kind / photo.name)
    return out


def many_photos(data: Path, out: Path, count: int) -> Path:
    """count photos, half a class, each a real photo mirrored, cropped, recoloured and re-encoded."""
    randomly = random.Random(0)
    for kind in ("cat", "dog"):
        real = sorted((data / "train" / kind).iterdir()) + sorted((data / "val" / kind).iterdir())
        (out / kind).mkdir(parents=True, exist_ok=True)
        for number in range(count // 2):
            with Image.open(real[number % len(real)]) as photo:
                image = ImageOps.mirror(photo.convert("RGB")) if randomly.random() < 0.5 else photo.convert("RGB")
            width, height = image.size
            keep = randomly.uniform(0.75, 1.0)
            left, top = randomly.randint(0, int(width * (1 - keep))), randomly.randint(0, int(height * (1 - keep)))
            image = image.crop((left, top, left + int(width * keep), top + int(height * keep)))
            image = ImageEnhance.Color(image).enhance(randomly.uniform(0.6, 1.4))
            image.save(out / kind / f"{kind}.{number}.jpg", quality=randomly.randint(70, 95))
    return out


def wait_for_run(http: httpx2.Client, project: str, run: str, folder: Path, started: float) -> dict:
    """Follow the run's event stream as the page does until it ends: (finished after, first best.pt
    after, gaps between messages)."""
    arrivals, first_best = [], None
    with http.stream("GET", f"/api/projects/{project}/runs/{run}/events", timeout=None) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.perf_counter())
                if first_best is None and (folder / "best.pt").exists():
                    first_best = time.perf_counter() - started
    state = http.get(f"/api/projects/{project}/runs").json()[0]["job"]["state"]
    if state != "finished":
        raise SystemExit(f"the run ended {state}: see {folder / 'job.log'}")
    updates = [t for previous, t in zip([0.0] + arrivals, arrivals) if t - previous > UPDATE_GAP]  # a tick's messages
    gaps = [b - a for a, b in zip(updates, updates[1:])]
    return {"seconds": time.perf_counter() - started, "first_best": first_best, "median_gap": statistics.median(gaps),
            "max_gap": max(gaps), "updates": len(updates)}


def train(http: httpx2.Client, project: str, root: Path, recipe: str, settings: dict) -> tuple[str, dict]:
    started = time.perf_counter()
    run = http.post(f"/api/projects/{project}/runs", json={"recipe": recipe, "settings": settings}).json()["name"]
    return run, wait_for_run(http, project, run, root / project / "runs" / run, started)


def live_rate(http: httpx2.Client, project: str, run: str, frames: list[bytes], seconds: float = 10) -> float:
    """Answers a second, one frame after the other (the page's loop), after a warm-up."""
    url = f"/api/projects/{project}/runs/{run}/predict"
    for frame in frames[:3]:
        http.post(url, files=[("file", ("webcam.jpg", frame, "image/jpeg"))])
    answered, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        response = http.post(url, files=[("file", ("webcam.jpg", frames[answered % len(frames)], "image/jpeg"))])
        assert "label" in response.json()[0]
        answered += 1
    return answered / (time.perf_counter() - started)


def webcam_frames(folder: Path) -> list[bytes]:
    frames = []
    for photo in sorted(folder.rglob("*.jpg"))[:10]:
        image = Image.open(photo).convert("RGB")
        image.thumbnail((FRAME, FRAME))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        frames.append(buffer.getvalue())
    return frames


def import_many(http: httpx2.Client, pid: int, count: int) -> dict:
    project = http.post("/api/projects", json={"name": "many"}).json()["id"]
    before = memory(pid)
    started = time.perf_counter()
    result = http.post(f"/api/projects/{project}/import", json={"source": 0, "path": "many"}, timeout=None).json()
    seconds = time.perf_counter() - started
    after = memory(pid)
    assert result["added"] == count and not result["skipped"], result["skipped"][:3]
    started = time.perf_counter()
    page = http.get(f"/api/projects/{project}/photos", params={"class": "dog", "offset": count // 4, "limit": 100}).json()
    page_ms = 1000 * (time.perf_counter() - started)
    started = time.perf_counter()
    http.get(f"/api/projects/{project}/thumbnail", params={"path": page["photos"][0]["path"]})
    thumbnail_ms = 1000 * (time.perf_counter() - started)
    return {"seconds": seconds, "before": before, "after": after, "page_ms": page_ms, "thumbnail_ms": thumbnail_ms}


def measure(data: Path, count: int, work: Path) -> dict:
    sources = work / "sources"
    small_folder(data, sources / "small")
    many = time.perf_counter()
    many_photos(data, sources / "many", count)
    print(f"made {count} photos in {time.perf_counter() - many:.0f} s", file=sys.stderr)
    process, url = start_studio(work / "root", sources)
    try:
        with httpx2.Client(base_url=url, timeout=300, headers={"origin": url}) as http:
            project = http.post("/api/projects", json={"name": "small"}).json()["id"]
            http.post(f"/api/projects/{project}/import", json={"source": 0, "path": "small"})
            pretrained, train_numbers = train(http, project, work / "root", "pretrained", {})
            scratch, _ = train(http, project, work / "root", "scratch", {"epochs": 3})
            frames = webcam_frames(sources / "small")
            rates = {"convnet": live_rate(http, project, scratch, frames),
                     "pretrained": live_rate(http, project, pretrained, frames)}
            imported = import_many(http, process.pid, count)
            evaluation = http.get(f"/api/projects/{project}/runs/{pretrained}/evaluation").json()
    finally:
        process.terminate()
        process.wait(60)
    return {"train": train_numbers, "rates": rates, "import": imported, "accuracy": evaluation["accuracy"],
            "cv": (evaluation["cross_validation"] or {}).get("accuracy"), "load": os.getloadavg()[0]}


def report(numbers: dict, count: int) -> str:
    t, i, r = numbers["train"], numbers["import"], numbers["rates"]
    cv = f"; cross-validation estimate {numbers['cv']:.0%}" if numbers["cv"] is not None else ""
    return f"""\
What the page does, over HTTP, against `python -m classifier.studio` (a real server; jobs in their own processes).

| | |
|---|---|
| "Train" to a usable model, 20 photos a class, the pretrained recipe as the page sends it | **{t['seconds']:.1f} s** to the end of the run (first best.pt after {t['first_best']:.1f} s); val accuracy {numbers['accuracy']:.0%}{cv} |
| the page's update interval while training (server-sent events) | median {t['median_gap']:.2f} s, longest {t['max_gap']:.2f} s ({t['updates']} updates) |
| importing {count:,} photos (copied, each decoded once to check it and make its thumbnail) | {i['seconds']:.0f} s ({count / i['seconds']:.0f} photos/s) |
| the server's memory, before and after that import | {i['before']['VmRSS']:.0f} MB -> {i['after']['VmRSS']:.0f} MB (peak {i['after']['VmHWM']:.0f} MB) |
| a page of 100 photos of a {count // 2:,}-photo class; a thumbnail | {i['page_ms']:.0f} ms; {i['thumbnail_ms']:.0f} ms |
| live predictions (webcam frames of {FRAME} px, one after the other): from-scratch convnet / pretrained | {r['convnet']:.1f} / {r['pretrained']:.1f} a second |

The machine is shared: the load average was {numbers['load']:.1f} at the end (2 cores); every figure is slower
under such load than on an idle machine of the same class."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/catsdogs"),
                        help="real photos in train/ and val/ class folders (default: %(default)s)")
    parser.add_argument("--photos", type=int, default=10_000, help="photos to import (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="studio-benchmark-") as work:
        numbers = measure(Path(args.data), args.photos, Path(work))
    print(json.dumps(numbers, indent=1), file=sys.stderr)
    write_section(f"studio-{class_tag()}", f"studio: from Train to a model, updates, 10,000 photos ({cpu_class()})",
                  report(numbers, args.photos))


if __name__ == "__main__":
    main()
