"""The studio's Learn tab and its API: a network learning on a project's photos, one step at a
time (learn.py does the work; this turns it into JSON and pictures for the page).

  GET  /api/projects/ID/learn         the learner's settings and pictures ({"started": false} if none)
  POST /api/projects/ID/learn/start   JSON settings (learn.LearnSettings' fields) -> a new learner, a
                                      run of the project (runs/learn-N/) on its photos, left-out ones
                                      left out
  POST /api/projects/ID/learn/step    exactly one iteration -> its numbers and pictures
  POST /api/projects/ID/learn/train   hand over to train.py --resume, as the studio's training job

One learner per project, kept in memory; a project's steps run one at a time.
"""

from __future__ import annotations

import math
import shutil
import threading
from dataclasses import asdict, fields
from pathlib import Path

from fastapi import APIRouter, Body, Depends

from classifier.errors import ClassifierError
from classifier.jobs import Job, python_module
from classifier.learn import Iteration, Learner, LearnSettings
from classifier.pictures import data_url
from classifier.projects import Project
from classifier.web import Area, changes_state
from classifier.workspace import Current, Opened


def number(value: float) -> float | None:
    """A float for JSON: rounded to 6 significant digits, None for infinity and NaN."""
    return float(f"{value:.6g}") if math.isfinite(value) else None


def numbers(values) -> list:
    return [number(float(v)) for v in values]


def settings_from(body: dict) -> LearnSettings:
    """LearnSettings from the page's JSON: known fields only, sizes as lists of whole numbers."""
    if not isinstance(body, dict):
        raise ClassifierError("the settings must be a JSON object")
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
    return {"started": True, "run": run, "settings": asdict(learner.settings), "classes": learner.run.classes,
            "photos": len(learner.run.pipeline.train_inputs[1]), "steps_per_pass": len(learner.batches),
            "batch_size": learner.run.plan.batch_size, "iteration": learner.iteration, "epoch": learner.state.epoch,
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


class Learners:
    """The learner of each project (one at a time per project), and a lock each."""

    def __init__(self):
        self.learners: dict[Path, tuple[Learner, str]] = {}
        self.locks: dict[Path, threading.Lock] = {}
        self.guard = threading.Lock()

    def lock(self, project: Project) -> threading.Lock:
        with self.guard:
            return self.locks.setdefault(project.folder, threading.Lock())

    def get(self, project: Project) -> tuple[Learner, str]:
        if project.folder not in self.learners:
            raise ClassifierError("no network is learning in this project yet: choose its settings and press Start")
        return self.learners[project.folder]

    def start(self, project: Project, settings: LearnSettings) -> tuple[Learner, str]:
        """A new learner in runs/learn-N/; the one it replaces leaves its run behind if it saved
        anything (a pass over the photos finished), else nothing."""
        if project.folder in self.learners:
            forget(self.learners.pop(project.folder)[0].run.out)
        taken, number = set(project.run_names()), 1
        while f"learn-{number}" in taken:
            number += 1
        run = f"learn-{number}"
        folder = project.run_folder(run, exists=False)
        folder.mkdir(parents=True)
        try:  # leaving the excluded photos out, as the Train tab's runs do
            learner = Learner.start(project.set_folder(), folder, settings, project.exclusion_file(folder))
        except ClassifierError:
            shutil.rmtree(folder)
            raise
        self.learners[project.folder] = (learner, run)
        return learner, run


def forget(out: Path) -> None:
    """Remove a learner's run folder if it holds nothing but what starting it wrote."""
    if out.is_dir() and all(path.name in ("skipped.txt", "excluded.txt", "events.jsonl") for path in out.iterdir()):
        shutil.rmtree(out)


LEARNERS = Learners()
learn = APIRouter(prefix="/api/projects/{project_id}/learn", dependencies=[Depends(changes_state)])


@learn.get("")
def state(project: Opened):
    with LEARNERS.lock(project):
        return overview(*LEARNERS.get(project)) if project.folder in LEARNERS.learners else {"started": False}


@learn.post("/start")
def start(project: Opened, body: dict = Body(default={})):
    settings = settings_from(body)
    with LEARNERS.lock(project):
        return overview(*LEARNERS.start(project, settings))


@learn.post("/step")
def step(project: Opened):
    with LEARNERS.lock(project):
        learner, _ = LEARNERS.get(project)
        return iteration_json(learner.step(), learner.run.classes)


@learn.post("/train")
def train(workspace: Current, project: Opened):
    """Train on as a normal run: the studio's training job resumes the learner's last.pt."""
    with LEARNERS.lock(project):
        learner, run = LEARNERS.get(project)
        last = learner.hand_over()
        workspace.jobs.start(Job("train", project.id, run, str(learner.run.out),
                                 python_module("classifier.train", "--resume", str(last))))
        del LEARNERS.learners[project.folder]
    return {"run": run, "command": f"python train.py --resume runs/{run}/last.pt"}


LEARN = Area("learn", learn, tab="Learn", scripts=["learn.js"])
