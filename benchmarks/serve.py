"""classifier.serve under load: photos/s and latency for 1, 4 and 16 concurrent clients.

    python -m benchmarks.serve [--checkpoint checkpoints/best.pt] [--data DIR/val] [--seconds 30]

Starts `python -m classifier.serve` as a child process on a free localhost port, then for each
number of clients runs that many threads, each posting one held-out photo per request (the
photos of --data in turn, read into memory first) for --seconds, after a short warm-up.
Reports photos/s (answered photos over the wall time), p50 and p99 latency of a request, and
errors (anything but HTTP 200 with a label: must be 0). Clients and server share the machine.
The numbers replace the "serve" section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2

from benchmarks.common import REPO, class_tag, cpu_class, write_section

WARMUP_REQUESTS = 8


def start_server(checkpoint: str, flags: list[str]) -> tuple[subprocess.Popen, str]:
    """The server on a free port (--port 0), once it has printed its address."""
    process = subprocess.Popen([sys.executable, "-m", "classifier.serve", "--checkpoint", checkpoint, "--port", "0",
                                "--no-access-log", *flags], cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    address = re.search(r"http://\S+", line)
    if not address:
        process.kill()
        raise SystemExit(f"the server did not start (see its error above): {line.strip()}")
    return process, address.group().rstrip("/")


def client(url: str, photos: list[tuple[str, bytes]], start: int, deadline: float, records: list) -> None:
    """Post photos[start], photos[start + 1], ... one per request until the deadline; append
    (seconds, ok) per request."""
    with httpx2.Client(base_url=url, timeout=60) as http:
        index = start
        while time.perf_counter() < deadline:
            name, data = photos[index % len(photos)]
            began = time.perf_counter()
            try:
                response = http.post("/predict", files=[("file", (name, data, "image/jpeg"))])
                ok = response.status_code == 200 and "label" in response.json()[0]
            except httpx2.HTTPError:
                ok = False
            records.append((time.perf_counter() - began, ok))
            index += 1


def measure(url: str, photos: list[tuple[str, bytes]], clients: int, seconds: float) -> dict:
    """`clients` threads posting for `seconds`: photos/s, p50 and p99 latency (ms), errors."""
    records: list[tuple[float, bool]] = []
    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(url, photos, k * len(photos) // clients, started + seconds, records))
               for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    latencies = sorted(seconds for seconds, _ in records)
    return {"clients": clients, "requests": len(records), "photos_per_s": sum(ok for _, ok in records) / wall,
            "p50": 1000 * statistics.median(latencies), "p99": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
            "errors": sum(not ok for _, ok in records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default="checkpoints/best.pt", help="model to serve (default: %(default)s)")
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/catsdogs/val"),
                        help="held-out photos, searched recursively (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=30, help="per number of clients (default: %(default)s)")
    parser.add_argument("--clients", default="1,4,16", help="numbers of concurrent clients (default: %(default)s)")
    parser.add_argument("server_flags", nargs=argparse.REMAINDER,
                        help="after --: more flags for the server, e.g. -- --threads 1 --no-tta")
    args = parser.parse_args()
    flags = [flag for flag in args.server_flags if flag != "--"]

    photos = [(p.name, p.read_bytes()) for p in sorted(Path(args.data).rglob("*.jpg"))]
    if not photos or not Path(args.checkpoint).exists():
        raise SystemExit(f"need photos in {args.data} and a checkpoint at {args.checkpoint} (train one, or --checkpoint)")
    process, url = start_server(args.checkpoint, flags)
    try:
        card = httpx2.get(url + "/info").json()
        for photo in photos[:WARMUP_REQUESTS]:  # first batches pay for lazy initialisation
            httpx2.post(url + "/predict", files=[("file", photo)], timeout=60)
        runs = [measure(url, photos, int(n), args.seconds) for n in args.clients.split(",")]
    finally:
        process.terminate()
        process.wait(30)

    rows = "\n".join(f"| {r['clients']} | {r['requests']:,} | {r['photos_per_s']:.1f} | {r['p50']:.0f} | "
                     f"{r['p99']:.0f} | {r['errors']} |" for r in runs)
    tta = " + ".join(map(str, [card["image_size"], *card["tta_sizes"]])) + " px with the mirror image" if card["tta"] else "off"
    body = f"""\
`python -m classifier.serve --checkpoint {" ".join([args.checkpoint, *flags])}` (defaults: batches of up to 32 photos, a small
batch waits 5 ms for more), model {card['model']} at {card['image_size']} px, TTA {tta}. Each client is a
thread posting one photo of `{args.data}` ({len(photos):,} JPEGs) per request, {args.seconds:g} s per row,
on the same machine as the server.

| clients | requests | photos/s | p50 ms | p99 ms | errors |
|---|---|---|---|---|---|
{rows}"""
    write_section(f"serve-{class_tag()}", f"serve: photos/s and latency under concurrent clients ({cpu_class()})", body)


if __name__ == "__main__":
    main()
