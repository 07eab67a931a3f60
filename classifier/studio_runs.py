"""The studio's training, evaluation, try-it and export areas: a run is PROJECT/runs/NAME/, the
folder `python -m classifier.train --data PROJECT/photos --out PROJECT/runs/NAME ...` writes.

  GET  /api/recipes                             the recipes and the settings the page shows
  GET  /api/projects/ID/runs                    every run: its job's state and best val accuracy
  POST /api/projects/ID/runs {"recipe", "settings", "name"}   train (the job; 409 if one runs)
  POST /api/projects/ID/runs/RUN/stop           SIGTERM: last.pt is saved
  POST /api/projects/ID/runs/RUN/resume         train.py --resume RUN/last.pt (exactly where it was; with the
                                                project's photos and the run's folder where they are now)
  GET  /api/projects/ID/runs/RUN/events         server-sent events: the run's events from its start,
                                                then new ones and a "status" event every PUSH_SECONDS
  GET  /api/projects/ID/runs/RUN/evaluation     curves, confusion matrix with each cell's photos,
                                                per-class scores, reliability, cross-validation
  POST /api/projects/ID/runs/RUN/test           evaluate best.pt on the project's test/ photos
  GET  /api/projects/ID/runs/RUN/info, POST .../predict[?explain=1]   serve's API over best.pt
  POST /api/projects/ID/runs/RUN/export {"format": "onnx" | "torchscript"}   into exports/RUN/
  GET  /api/projects/ID/runs/RUN/download/FILE  best.pt, model.onnx, model.ts or MODEL_CARD.md

Try it answers as the exported model does (serve.Services in fp32, one view: the graph export.py
writes), so the page, the ONNX file and the TorchScript file give the same label and probabilities.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from classifier.checkpoint import load_checkpoint
from classifier.data import PhotoFolder
from classifier.errors import ClassifierError
from classifier.export import export
from classifier.jobs import Busy, Follower, Job, job_of, python_module
from classifier.projects import Missing, Project, relative_photo, safe_name
from classifier.report import summarize
from classifier.runs import Predictions, read_metrics, read_predictions
from classifier.serve import Service, predict_router
from classifier.studio_photos import body, text
from classifier.web import Area, changes_state
from classifier.workspace import Current, Opened, current

PUSH_SECONDS = 0.5  # the page hears from a running job at least this often
EXPORTS = {"onnx": "model.onnx", "torchscript": "model.ts"}
CARD_FILE = "MODEL_CARD.md"


@dataclass
class Setting:
    """One setting a recipe shows: the train.py flag --NAME, its label, its kind (int, float,
    ints: comma-separated whole numbers, or a tuple of choices), the form's value (None: the
    recipe's default) and the bounds accepted."""

    name: str
    label: str
    kind: object
    value: object = None
    low: float = 0
    high: float = 10**6

    def flag(self, given) -> list[str]:
        if given is None or given == "":
            return []
        if isinstance(self.kind, tuple):
            if given not in self.kind:
                raise ClassifierError(f"{self.label}: choose one of {', '.join(self.kind)}")
            value = given
        elif self.kind == "ints":
            parts = str(given).replace(" ", "").split(",")
            if not all(p.isdigit() and self.low <= int(p) <= self.high for p in parts if p):
                raise ClassifierError(f"{self.label}: whole numbers from {self.low} to {self.high}, comma-separated")
            value = ",".join(p for p in parts if p)
        else:
            try:
                number = self.kind(given)
            except (TypeError, ValueError):
                raise ClassifierError(f"{self.label}: {given!r} is not a number") from None
            if not self.low <= number <= self.high:
                raise ClassifierError(f"{self.label}: from {self.low:g} to {self.high:g}, not {number:g}")
            value = str(number)
        return [f"--{self.name.replace('_', '-')}", value]


@dataclass
class Recipe:
    title: str
    about: str
    flags: list[str]
    settings: list[Setting] = field(default_factory=list)


EPOCHS, SIZE = Setting("epochs", "epochs", int, None, 1, 1000), Setting("image_size", "image size (pixels)", int, None, 16, 512)
RECIPES = {
    "pretrained": Recipe("Pretrained network", "a network that already knows ImageNet's photos learns your classes: "
                         "fast, and the most accurate", ["--model", "efficientnet_lite0", "--pretrained"], [EPOCHS, SIZE]),
    "scratch": Recipe("From scratch", "a small convolutional network learns from random weights: only your photos; "
                      "minutes, and it needs many photos", ["--model", "convnet"],
                      [Setting("time_budget", "minutes at most", float, None, 0.2, 600), EPOCHS, SIZE]),
    "mlp": Recipe("The article's network", "neurons in layers, every pixel an input: the network the article draws",
                  ["--model", "mlp", "--optimizer", "sgd"],
                  [Setting("hidden", "hidden layer sizes", "ints", "512,128", 1, 8192),
                   Setting("activation", "activation", ("sigmoid", "relu", "tanh", "gelu"), "sigmoid"),
                   Setting("loss", "loss", ("mse", "ce"), "mse"), Setting("lr", "learning rate", float, None, 1e-6, 10),
                   Setting("momentum", "momentum", float, 0.9, 0, 0.999), Setting("epochs", "epochs", int, 30, 1, 1000),
                   Setting("image_size", "image size (pixels)", int, 32, 8, 128)]),
}


def train_command(project: Project, folder: Path, recipe: Recipe, settings: dict) -> list[str]:
    if not isinstance(settings, dict):
        raise ClassifierError("'settings' must be a JSON object")
    known = {s.name: s for s in recipe.settings}
    unknown = set(settings) - set(known)
    if unknown:
        raise ClassifierError(f"unknown setting(s) {', '.join(sorted(unknown))}: this recipe has {', '.join(known)}")
    flags = [f for s in recipe.settings for f in s.flag(settings.get(s.name, s.value))]
    command = python_module("classifier.train", "--data", str(project.set_folder()), "--out", str(folder),
                            *recipe.flags, *flags)
    excluded = project.exclusion_file(folder)
    return command + (["--exclude", excluded] if excluded else [])


def run_summary(project: Project, name: str) -> dict:
    folder = project.run_folder(name)
    try:
        metrics = read_metrics(folder)
    except (ClassifierError, ValueError, KeyError):
        metrics = []
    evaluated = [m for m in metrics if "val_accuracy" in m]
    best = max(evaluated, key=lambda m: m["val_accuracy"], default=None)
    return {"name": name, "job": job_of(folder), "epochs": len(metrics),
            "val_accuracy": best and best["val_accuracy"], "best_epoch": best and best["epoch"],
            "trained": (folder / "best.pt").is_file(),
            "exports": sorted(p.name for p in (project.folder / "exports" / name).glob("*")
                              if p.name in (*EXPORTS.values(), CARD_FILE))}


recipes = APIRouter(prefix="/api")


@recipes.get("/recipes")
def list_recipes():
    return {name: {**asdict(recipe), "settings": [{**asdict(s), "kind": list(s.kind) if isinstance(s.kind, tuple)
                                                  else getattr(s.kind, "__name__", s.kind)} for s in recipe.settings]}
            for name, recipe in RECIPES.items()}


@recipes.get("/job")
def running_job(workspace: Current):
    running = workspace.jobs.running()
    return None if running is None else {"kind": running.kind, "project": running.project, "name": running.name}


runs = APIRouter(prefix="/api/projects/{project_id}/runs", dependencies=[Depends(changes_state)])


@runs.get("")
def list_runs(project: Opened):
    return [run_summary(project, name) for name in reversed(project.run_names())]


@runs.post("")
async def train(workspace: Current, project: Opened, request: Request):
    values = await body(request)
    recipe = RECIPES.get(values.get("recipe", "pretrained"))
    if recipe is None:
        raise ClassifierError(f"unknown recipe {values.get('recipe')!r}: choose one of {', '.join(RECIPES)}")
    name = safe_name(text(values, "name"), "run name") if values.get("name") else project.new_run_name()
    folder = project.run_folder(name, exists=False)
    if folder.exists():
        raise ClassifierError(f"a run named {name!r} exists already: choose another name")
    folder.mkdir(parents=True)
    try:
        command = train_command(project, folder, recipe, values.get("settings") or {})
        workspace.jobs.start(Job("train", project.id, name, str(folder), command))
    except ClassifierError:
        shutil.rmtree(folder)  # the run never started: no empty run left behind
        raise
    return run_summary(project, name)


@runs.post("/{run}/stop")
def stop(workspace: Current, project: Opened, run: str):
    folder = project.run_folder(run)
    running = workspace.jobs.running()
    if running is None or Path(running.folder) != folder:
        raise Busy(f"run {run!r} is not running")
    workspace.jobs.stop()
    return job_of(folder)


@runs.post("/{run}/resume")
def resume(workspace: Current, project: Opened, run: str):
    folder = project.run_folder(run)
    state = (job_of(folder) or {}).get("state")
    if not (folder / "last.pt").is_file() or state in ("running", "finished"):
        raise ClassifierError(f"run {run!r} has nothing to resume ({state or 'no last.pt'})")
    relist_exclusions(folder)
    command = python_module("classifier.train", "--resume", str(folder / "last.pt"),
                            "--data", str(project.set_folder()), "--out", str(folder))  # where they are now
    workspace.jobs.start(Job("train", project.id, run, str(folder), command))
    return run_summary(project, run)


def relist_exclusions(folder: Path) -> None:
    """An older run's excluded.txt names photos by absolute path: those inside the photos folder it
    trained on are rewritten as ./CLASS/FILE, so that it leaves them out wherever the project is now."""
    path = folder / "excluded.txt"
    lines = path.read_text().splitlines() if path.is_file() else []
    if any(os.path.isabs(line) for line in lines):
        photos = Path(load_checkpoint(folder / "last.pt")["config"]["data"])
        relisted = [relative_photo(line, photos) for line in lines]
        path.write_text("".join(f"{line if new == line else './' + new}\n" for line, new in zip(lines, relisted)))


@runs.get("/{run}/events")
async def events(project: Opened, run: str, request: Request):
    return StreamingResponse(follow(project.run_folder(run), request), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


async def follow(folder: Path, request: Request):
    """Server-sent events: every event of the run so far, then new ones as they come, and a
    "status" event (the job's state) every PUSH_SECONDS; the stream ends when the job does."""
    follower = Follower(folder)
    while not await request.is_disconnected():
        job = job_of(folder)
        for event in await run_in_threadpool(follower.events):
            yield f"data: {json.dumps(event)}\n\n"
        yield f"event: status\ndata: {json.dumps({'job': job, 'time': time.time()})}\n\n"
        if not job or job["state"] != "running":
            return
        await asyncio.sleep(PUSH_SECONDS)



# --------------------------------------------------------------------------- evaluate


def data_root(folder: Path) -> str:
    """The --data folder the run was trained on (its photos' paths are relative to it)."""
    job = Job.read(folder)
    command = job.command if job else []
    start = next((i for i, part in enumerate(command) if part == "--data"), None)
    return command[start + 1] if start is not None else ""


def cells(predictions: Predictions, root: str) -> list[list[list[str]]]:
    """cells[true][predicted]: the photos (CLASS/FILE in the project) of each confusion cell."""
    count = len(predictions.classes)
    table = [[[] for _ in range(count)] for _ in range(count)]
    for path, true, guess in zip(predictions.paths, predictions.labels.tolist(), predictions.predicted.tolist()):
        relative = os.path.relpath(path, root) if root else "/".join(Path(path).parts[-2:])
        table[true][guess].append(Path(relative).as_posix())
    return table


def evaluation(project: Project, name: str) -> dict:
    """What the Evaluate tab shows, from what training wrote (report.py's numbers)."""
    folder = project.run_folder(name)
    if not (folder / "best.pt").is_file():
        raise ClassifierError(f"run {name!r} has no trained model yet (best.pt is written after the first evaluation)")
    metrics, predictions = read_metrics(folder), read_predictions(folder)
    result = {**summarize(metrics, predictions), "metrics": metrics, "cells": cells(predictions, data_root(folder))}
    for extra in ("cross_validation", "test_evaluation"):
        path = folder / f"{extra}.json"
        result[extra] = json.loads(path.read_text()) if path.is_file() else None
    return result


def test_evaluation(project: Project, name: str, service: Service) -> dict:
    """best.pt on the project's test/CLASS/ photos, answered as the page answers; written to
    RUN/test_evaluation.json."""
    folder = project.set_folder("test")
    if not any(c["photos"] for c in project.classes("test")):
        raise ClassifierError("no test photos: add a folder of class folders as test photos first")
    found = PhotoFolder(folder)
    classifier = service.classifier
    unknown = [c for c in found.classes if c not in classifier.classes]
    if unknown:
        raise ClassifierError(f"test class(es) {', '.join(unknown)} are not classes of this model "
                              f"({', '.join(classifier.classes)})")
    labels, paths, rows, skipped = [], [], [], []
    answers = classifier.predict_paths([path for path, _ in found.samples], tta=service.tta)
    for (path, label), result in zip(found.samples, answers):
        if "error" in result:
            skipped.append({"name": project.relative(path, "test"), "reason": result["error"]})
            continue
        paths.append(path)
        labels.append(classifier.classes.index(found.classes[label]))
        rows.append([result["probabilities"][c] for c in classifier.classes])
    if not rows:
        raise ClassifierError("none of the test photos could be read")
    predictions = Predictions(classifier.classes, paths, torch.tensor(labels), torch.tensor(rows, dtype=torch.float64), 0)
    result = {**summarize([], predictions), "cells": cells(predictions, str(folder)), "skipped": skipped}
    (project.run_folder(name) / "test_evaluation.json").write_text(json.dumps(result, indent=1) + "\n")
    return result


evaluate = APIRouter(prefix="/api/projects/{project_id}/runs/{run}", dependencies=[Depends(changes_state)])


@evaluate.get("/evaluation")
def show_evaluation(workspace: Current, project: Opened, run: str):
    running = workspace.jobs.running()
    if running and Path(running.folder) == project.run_folder(run):
        raise Busy(f"run {run!r} is still training: evaluate it when it has finished or stopped")
    return evaluation(project, run)


@evaluate.post("/test")
async def test(workspace: Current, project: Opened, run: str):
    service = await workspace.services.get(project.run_folder(run) / "best.pt")
    return await run_in_threadpool(test_evaluation, project, run, service)


async def service_of(request: Request) -> Service:
    """serve's Service over the best.pt of the run the route names, loaded on first use (serve.Services)."""
    workspace = current(request)
    project = workspace.project(request.path_params["project_id"])
    return await workspace.services.get(project.run_folder(request.path_params["run"]) / "best.pt")


# --------------------------------------------------------------------------- export


def model_card(project: Project, name: str, card: dict, formats: list[str]) -> str:
    """MODEL_CARD.md: what the model is, how good, how to use the exported files."""
    summary = run_summary(project, name)
    folder = project.run_folder(name)
    cv = json.loads((folder / "cross_validation.json").read_text()) if (folder / "cross_validation.json").is_file() else None
    lines = [f"# {project.settings.get('name', project.id)}: {name}", "",
             f"- classes: {', '.join(card['classes'])}",
             f"- model: {card['model']}, trained {card['trained_at']}, epoch {card['epoch']}",
             f"- val accuracy: {summary['val_accuracy']:.1%}" if summary["val_accuracy"] is not None else "- val accuracy: unknown",
             f"- cross-validation estimate: {cv['accuracy']:.1%} over {cv['photos']} photos ({cv['folds']} folds)" if cv else None,
             f"- input: an RGB photo resized to {card['image_size']} x {card['image_size']} pixels ({card['resize']}), "
             f"uint8 [N, 3, {card['image_size']}, {card['image_size']}]; normalization is inside the model",
             f"- output: calibrated probabilities (temperature {card['temperature']:.3f}), one per class, in the order above",
             "- neither: " + ("a photo unlike every class is answered \"neither\" (the rule is in the file's metadata; "
                              "`Classifier.load` applies it)" if card["neither"] else "no rule: every photo gets a class"),
             "", "## Use it", "", "```python",
             "from classifier import Classifier            # pip install catsdogs-classifier[onnx]",
             f"model = Classifier.load(\"{EXPORTS['onnx']}\")",
             "model.predict(\"photo.jpg\", tta=False)       # the studio's answer: same label, probabilities within 1e-4",
             "```", "", f"Files: {', '.join(formats)}. Made by `python -m classifier.studio` "
             f"(the same as `python -m classifier.export runs/{name}/best.pt`)."]
    return "\n".join(line for line in lines if line is not None) + "\n"


exports = APIRouter(prefix="/api/projects/{project_id}/runs/{run}", dependencies=[Depends(changes_state)])


@exports.post("/export")
async def make_export(workspace: Current, project: Opened, run: str, request: Request):
    format = text(await body(request), "format", "onnx")
    if format not in EXPORTS:
        raise ClassifierError(f"unknown format {format!r}: choose one of {', '.join(EXPORTS)}")
    checkpoint = project.run_folder(run) / "best.pt"
    service = await workspace.services.get(checkpoint)
    folder = project.folder / "exports" / run
    await run_in_threadpool(export, checkpoint, folder / EXPORTS[format], format)
    made = [f for f in EXPORTS.values() if (folder / f).is_file()]
    (folder / CARD_FILE).write_text(model_card(project, run, service.card, made))
    return run_summary(project, run)


@exports.get("/download/{file}")
def download(project: Opened, run: str, file: str):
    folder = project.run_folder(run) if file == "best.pt" else project.folder / "exports" / run
    if file not in ("best.pt", CARD_FILE, *EXPORTS.values()) or not (folder / file).is_file():
        raise Missing(f"no {file!r} for run {run!r}" + ("" if file == "best.pt" else ": export it first"))
    return FileResponse(folder / file, filename=f"{project.id}-{run}-{file}",
                        media_type="text/markdown" if file.endswith(".md") else "application/octet-stream")


RECIPES_AREA = Area("recipes", recipes)
RUNS = Area("runs", runs, tab="Train", scripts=["chart.js", "train.js"])
EVALUATE = Area("evaluate", evaluate, tab="Evaluate", scripts=["evaluate.js"])
TRY = Area("try", predict_router(service_of, "/api/projects/{project_id}/runs/{run}"), tab="Try it", scripts=["try.js"])
EXPORT = Area("export", exports, tab="Export", scripts=["export.js"])
