"""The Learn and Inside pages' speed on a project of 2,000 photos (issue 24's bars: at least 5 steps
shown a second, any layer inside in at most 1 s, a channel's top patches in at most 2 s).

    python -m benchmarks.learn [--data ../shared/data/catsdogs] [--seconds 10]

Makes a studio project of --data's training photos (copied), then
  Learn    for the tab's default MLP and convnet: steps a second through the API (the route's
           step, its numbers and pictures as JSON), and in a real headless Chromium playing at
           full pace, the studio's page redrawing after every step;
  Inside   for a run of each, and for the from-scratch recipe's network (one epoch, trained by the
           studio's Train as a job): one photo through every layer with Grad-CAM (the look), then
           every layer's first page of channels; and the top patches of a channel: the first click
           (for the job's run, after the background pass over the training photos that its end
           started, timed too; for the others, including that pass), and then for each layer from
           the cache, as a new server would read it.
Writes its section of benchmarks/RESULTS.md, per CPU class.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from playwright.sync_api import expect, sync_playwright

from benchmarks.common import REPO, class_tag, cpu_class, write_section
from classifier.inside_view import INSIDES
from classifier.jobs import Job
from classifier.projects import Project
from classifier.studio import create_app
from classifier.workspace import Workspace

MODELS = {"mlp": {"model": "mlp"}, "convnet": {"model": "convnet", "lr": 0.05}}  # the tab's defaults
CHROMIUM = "/usr/bin/chromium"
ORIGIN = "http://127.0.0.1"
API = "/api/projects/pets"


def make_project(data: Path, root: Path) -> Path:
    """A studio project under root: a copy of every training photo of data/train/<class>/."""
    project = Project.create(root, "pets")
    for folder in sorted(p for p in (data / "train").iterdir() if p.is_dir()):
        shutil.copytree(folder, project.folder / "photos" / folder.name)
    return project.folder


def client(root: Path) -> TestClient:
    """The studio's app over root, as its page talks to it (same origin): a newly started server."""
    return TestClient(create_app(Workspace(root)), base_url=ORIGIN, headers={"origin": ORIGIN})


def api_rate(http: TestClient, project: Path, settings: dict, seconds: float) -> dict:
    """Steps a second through the API's step route, for `seconds` after a short warm-up; then
    steps on until the run has finished a pass over the photos (so that it has a best.pt)."""
    run = http.post(f"{API}/learn/start", json=settings).json()["run"]
    for _ in range(3):
        http.post(f"{API}/learn/step")
    times, started = [], time.perf_counter()
    while time.perf_counter() - started < seconds:
        began = time.perf_counter()
        assert http.post(f"{API}/learn/step").status_code == 200
        times.append(time.perf_counter() - began)
    while not (project / "runs" / run / "best.pt").exists():
        http.post(f"{API}/learn/step")
    return {"run": run, "rate": len(times) / (time.perf_counter() - started), "median": statistics.median(times),
            "slowest": max(times)}


def serve(app: FastAPI) -> tuple[uvicorn.Server, str]:
    """The app on a free local port, in a thread."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def page_rate(url: str, model: str, seconds: float) -> float:
    """Steps a second the Learn page shows in a headless Chromium playing at full pace."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"{url}/#/p/pets/learn")
        page.wait_for_selector("#learn[data-ready]")
        if not page.locator("#learn-settings").is_visible():
            page.click("#learn-again")
        page.check(f'#learn input[name="model"][value="{model}"]')
        page.click("#learn-start")
        expect(page.locator("#learn-controls")).to_be_visible(timeout=300_000)
        page.select_option("#learn-pace", "0")
        page.click("#learn-step")
        expect(page.locator("#learn-iteration")).to_have_text("1", timeout=60_000)
        started = time.perf_counter()
        page.click("#learn-play")
        time.sleep(seconds)
        page.click("#learn-pause")
        expect(page.locator("#learn-play")).to_be_enabled(timeout=60_000)
        shown = int(page.locator("#learn-iteration").text_content()) - 1
        rate = shown / (time.perf_counter() - started)
        browser.close()
    return rate


def timed(call):
    began = time.perf_counter()
    response = call()
    assert response.status_code == 200, response.text
    return time.perf_counter() - began, response.json()


def inside_times(root: Path, run: str) -> dict:
    """A channel's top patches the first time (the pass over the training photos); then a look at
    a photo and every layer's first page; then each layer's top patches from the cache, as a newly
    started server reads it."""
    channel = API + "/inside/channel?run={run}&layer={layer}&channel=0"
    http = client(root)
    first, _ = timed(lambda: http.get(channel.format(run=run, layer=1)))
    photo = http.get(f"{API}/inside/photos").json()["cat"][0]
    look_seconds, look = timed(lambda: http.post(f"{API}/inside/look", data={"run": run, "photo": photo}))
    layers = [layer["index"] for layer in look["layers"]]
    pages = [timed(lambda: http.get(f"{API}/inside/looks/{look['look']}/layers/{layer}"))[0] for layer in layers]
    fresh = client(root)
    channels = [timed(lambda: fresh.get(channel.format(run=run, layer=layer)))[0] for layer in layers]
    return {"look": look_seconds, "page": max(pages), "layers": len(layers), "first": first, "cached": max(channels)}


def recipe_run(root: Path, project: Path) -> tuple[str, float]:
    """One epoch of the from-scratch recipe's network, trained as the studio's Train tab starts it
    (a job of the server); returns the run and the seconds from the job's end until its top patches
    were prepared in the background (inside_view.prepare_trained_run)."""
    with client(root) as http:
        answer = http.post(f"{API}/runs", json={"recipe": "scratch", "settings": {"epochs": 1}})
        assert answer.status_code == 200, answer.text
        run = answer.json()["name"]
        while http.get("/api/job").json() is not None:
            time.sleep(0.2)
        job = Job.read(project / "runs" / run)
        assert job.state == "finished", job.message
        INSIDES.background.submit(lambda: None).result()  # after the preparation the job's end queued
        return run, time.time() - job.ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared/data/catsdogs"),
                        help="dataset whose train/<class>/ photos make the project (default: %(default)s)")
    parser.add_argument("--seconds", type=float, default=10, help="of stepping, for each rate (default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="learn-benchmark-") as root:
        project = make_project(Path(args.data), Path(root))
        photos = sum(1 for _ in (project / "photos").rglob("*.*"))
        learn_rows, inside_rows, runs = [], [], {}
        with client(Path(root)) as http:
            for name, settings in MODELS.items():
                rate = api_rate(http, project, settings, args.seconds)
                runs[name] = rate["run"]
                print(name, rate, flush=True)
                learn_rows.append((name, rate))
        server, url = serve(create_app(Workspace(Path(root))))
        try:
            shown = {name: page_rate(url, settings["model"], args.seconds) for name, settings in MODELS.items()}
        finally:
            server.should_exit = True
        runs["recipe"], prepared = recipe_run(Path(root), project)
        for name, run in runs.items():
            times = inside_times(Path(root), run)
            times["prepared"] = prepared if name == "recipe" else None
            print(name, times, flush=True)
            inside_rows.append((name, times))
    write_section(f"learn-{class_tag()}", f"Learn and Inside pages ({cpu_class()})",
                  report(photos, learn_rows, shown, inside_rows))


def report(photos: int, learn_rows: list, shown: dict, inside_rows: list) -> str:
    names = {"mlp": "MLP, the Learn tab's default (32 px, a hidden layer of 32)",
             "convnet": "convnet, the Learn tab's default (32 px, 8-16-32 channels)",
             "recipe": "the from-scratch recipe's convnet (one epoch, a studio training job)"}
    lines = [f"A studio project of {photos} photos (catsdogs' train/, 80% of them training photos). Steps shown a second: "
             "through the API's step route (one iteration, its numbers and pictures as JSON), and in headless "
             "Chromium playing at full pace, the studio's Learn tab redrawn after each (target: at least 5).", "",
             "| network | API: steps/s (median, slowest step) | page in Chromium: steps/s |", "|---|---|---|"]
    lines += [f"| {names[name]} | {rate['rate']:.1f} ({1000 * rate['median']:.0f} ms, {1000 * rate['slowest']:.0f} ms "
              f"with a pass's validation) | {shown[name]:.1f} |" for name, rate in learn_rows]
    lines += ["", "Inside (targets: any layer in at most 1 s, a channel's top patches in at most 2 s): the look is one "
              "photo through every layer, the output layer, the neither answer and Grad-CAM; then each layer's first "
              "page of channels. Top patches: the one pass over the training photos (then cached on disk per "
              "checkpoint) runs in the background when a studio training job finishes (its seconds after the job's "
              "end: \"prepared\"), so the first click reads the cache; for the Learn tab's runs, not trained by a job, "
              "the first click includes the pass. After that, each layer's from the cache in a newly started server.",
              "", "| network | layers | look | slowest layer's page | prepared after the job | top patches, first click "
              "| top patches from the cache: slowest layer |", "|---|---|---|---|---|---|---|"]
    prepared = {name: "-" if t["prepared"] is None else f"{t['prepared']:.1f} s" for name, t in inside_rows}
    lines += [f"| {names[name]} | {t['layers']} | {t['look']:.2f} s | {t['page']:.3f} s | {prepared[name]} | "
              f"{t['first']:.2f} s | {t['cached']:.2f} s |" for name, t in inside_rows]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
