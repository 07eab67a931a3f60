"""The studio's Learn page and its API: a network learning on a project's photos, one step at a
time (learn.py does the work; this turns it into JSON and pictures for the page).

  GET  /projects/{project}/learn         the page
  GET  /projects/{project}/learn/state   the learner's settings and pictures (started: false if none)
  POST /projects/{project}/learn/start   JSON settings (learn.LearnSettings' fields) -> a new learner,
                                         a run in the project's runs/learn-<time>/
  POST /projects/{project}/learn/step    exactly one iteration -> its numbers and pictures
  POST /projects/{project}/learn/train   hand over to train.py (--resume), as a normal run

One learner per project, kept in memory; steps run one at a time in a worker thread.
"""

from __future__ import annotations

import datetime
import math
import shutil
import subprocess
import sys
import threading
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable

from fastapi import APIRouter, Body
from fastapi.responses import FileResponse

from classifier.errors import ClassifierError
from classifier.learn import Iteration, Learner, LearnSettings
from classifier.pictures import data_url

STATIC = Path(__file__).with_name("static")


def number(value: float) -> float | None:
    """A float for JSON: rounded to 6 significant digits, None for infinity and NaN."""
    return float(f"{value:.6g}") if math.isfinite(value) else None


def numbers(values) -> list:
    return [number(float(v)) for v in values]


def settings_from(body: dict) -> LearnSettings:
    """LearnSettings from the page's JSON: known fields only, sizes as lists of whole numbers."""
    known = {f.name for f in fields(LearnSettings)}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ClassifierError(f"unknown setting(s) {', '.join(unknown)}: use {', '.join(sorted(known))}")
    values = dict(body)
    for name in ("hidden", "channels"):
        if name in values:
            if not isinstance(values[name], list) or not all(isinstance(v, int) for v in values[name]):
                raise ClassifierError(f"{name} must be a list of whole numbers, got {values[name]!r}")
            values[name] = tuple(values[name])
    for name in ("model", "activation", "loss"):
        if name in values and not isinstance(values[name], str):
            raise ClassifierError(f"{name} must be text, got {values[name]!r}")
    return LearnSettings(**values).check()


def overview(learner: Learner, run: str) -> dict:
    """What the page draws before the first step: settings, classes, layers, first-layer pictures."""
    weights, learned = learner.first_layer()
    config = learner.run.config
    return {"started": True, "run": run, "settings": asdict(learner.settings), "classes": learner.run.classes,
            "photos": len(learner.run.pipeline.train_inputs[1]), "steps_per_pass": len(learner.batches),
            "batch_size": config.batch_size, "iteration": learner.iteration, "epoch": learner.state.epoch,
            "layers": list(learner.labels.values()), "first_layer": [data_url(w) for w in weights],
            "learned": [data_url(w) for w in learned], "diverged": learner.diverged}


def iteration_json(shown: Iteration, classes: list[str]) -> dict:
    """One step's numbers and pictures, as the page shows them."""
    batch = [{"image": data_url(photo), "label": classes[label], "outputs": numbers(outputs),
              "probabilities": numbers(probabilities), "target": numbers(target)}
             for photo, label, outputs, probabilities, target in
             zip(shown.photos, shown.labels, shown.outputs, shown.probabilities, shown.targets)]
    validation = "val_accuracy" in shown.validation and {"epoch": shown.validation["epoch"],
                                       "accuracy": number(shown.validation["val_accuracy"]),
                                       "error": number(shown.validation["val_loss"])}
    return {"iteration": shown.iteration, "epoch": shown.epoch, "batch": batch, "error": number(shown.error),
            "errors": {k: number(v) for k, v in shown.errors.items()},
            "layers": [{"label": layer.label, "gradient": number(layer.gradient), "change": number(layer.change),
                        "size": number(layer.size)} for layer in shown.layers],
            "first_layer": [data_url(w) for w in shown.first_layer], "learned": [data_url(w) for w in shown.learned],
            "diverged": shown.diverged, "validation": validation or None}


def start_train(arguments: list[str]) -> None:
    """The default hand-over: train.py in its own process, as the command line runs it."""
    subprocess.Popen([sys.executable, "-m", "classifier.train", *arguments], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True)


class Learners:
    """The learner of each project (one at a time per project), and a lock each."""

    def __init__(self):
        self.learners: dict[Path, tuple[Learner, str]] = {}
        self.locks: dict[Path, threading.Lock] = {}
        self.guard = threading.Lock()

    def lock(self, project: Path) -> threading.Lock:
        with self.guard:
            return self.locks.setdefault(project, threading.Lock())

    def get(self, project: Path) -> tuple[Learner, str]:
        if project not in self.learners:
            raise ClassifierError("no network is learning in this project yet: choose its settings and press Start")
        return self.learners[project]

    def start(self, project: Path, settings: LearnSettings) -> tuple[Learner, str]:
        """A new learner in runs/learn-<date>-<time>/; the one it replaces leaves its run behind
        if it saved anything (a pass over the photos finished), else nothing."""
        if project in self.learners:
            forget(self.learners.pop(project)[0].run.out)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run = next(name for name in (f"learn-{stamp}" + (f"-{n}" if n else "") for n in range(1000))
                   if not (project / "runs" / name).exists())
        learner = Learner.start(project / "photos", project / "runs" / run, settings)
        self.learners[project] = (learner, run)
        return learner, run


def forget(out: Path) -> None:
    """Remove a learner's run folder if it holds nothing but the list of unreadable photos."""
    if out.is_dir() and all(path.name == "skipped.txt" for path in out.iterdir()):
        shutil.rmtree(out)


def router(project_folder: Callable[[str], Path], start_training: Callable[[list[str]], None] = start_train,
           dependencies: list | None = None) -> APIRouter:
    """The Learn area. project_folder(name): the project's folder (raising for an unknown one);
    start_training(arguments): runs `train.py ARGUMENTS` in its own process;
    dependencies: of the routes that change something (the studio's same-origin check)."""
    api, learners = APIRouter(), Learners()
    changes = {"dependencies": dependencies or []}

    @api.get("/projects/{project}/learn", include_in_schema=False)
    def page(project: str):
        project_folder(project)
        return FileResponse(STATIC / "learn.html")

    @api.get("/projects/{project}/learn/state")
    def state(project: str):
        folder = project_folder(project)
        with learners.lock(folder):
            return overview(*learners.get(folder)) if folder in learners.learners else {"started": False}

    @api.post("/projects/{project}/learn/start", **changes)
    def start(project: str, body: dict = Body(default={})):
        folder, settings = project_folder(project), settings_from(body)
        with learners.lock(folder):
            return overview(*learners.start(folder, settings))

    @api.post("/projects/{project}/learn/step", **changes)
    def step(project: str):
        folder = project_folder(project)
        with learners.lock(folder):
            learner, _ = learners.get(folder)
            return iteration_json(learner.step(), learner.run.classes)

    @api.post("/projects/{project}/learn/train", **changes)
    def train(project: str):
        folder = project_folder(project)
        with learners.lock(folder):
            learner, run = learners.get(folder)
            start_training(["--resume", str(learner.hand_over())])
            del learners.learners[folder]
        return {"run": run, "command": f"python train.py --resume runs/{run}/last.pt"}

    return api
