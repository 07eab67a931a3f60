"""Watch a network learn, one iteration at a time (the studio's Learn view, the notebook, the tests).

    learner = Learner.start("project/photos", "project/runs/learn", LearnSettings(model="mlp", lr=0.01))
    shown = learner.step()       # one batch: forward pass, error, backward pass, weight update
    shown.error, shown.layers[0].change, shown.iteration
    learner.hand_over()          # last.pt: `python train.py --resume project/runs/learn/last.pt`
                                 # trains on from this very step, as a normal run

A learner is a training run set up by train.py's own `setup` (the same data, model, plan, optimizer
and schedule) whose steps are taken one at a time by loop.seeded_step, the step train.py takes; at
the end of each pass over the photos it validates, logs and saves like any run (fitting.end_epoch),
and its events go to OUT/events.jsonl as a run's do. So the
folder it leaves is a run like any other, and it resumes exactly like an interrupted one (steps
run on one thread here: train.py with more threads sums in another order, to float rounding).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from classifier import distributed
from classifier.config import TrainConfig
from classifier.data import Batches
from classifier.errors import ClassifierError
from classifier.fitting import Run, end_epoch, save
from classifier.loop import Step, TrainState, compute_loss, seeded_step, start_epoch
from classifier.models import ACTIVATIONS
from classifier.pictures import photos, weight_images
from classifier.runs import EventLog
from classifier.runtime import one_thread
from classifier.train import setup

MODELS = ("mlp", "convnet")
LIMITS = {"lr": (1e-6, 100.0), "momentum": (0.0, 0.99), "batch_size": (1, 256), "image_size": (8, 128),
          "epochs": (1, 1000), "width": (1, 1024), "depth": (0, 6)}


@dataclass
class LearnSettings:
    """What a person can change before the first step; the rest is plain gradient descent: no
    augmentation, weight decay, label smoothing, warmup, dropout or moving average."""

    model: str = "mlp"  # "mlp" or "convnet", from random weights
    lr: float = 0.01  # the learning rate: how far each step moves the weights against the gradient
    hidden: tuple = (32,)  # mlp: neurons in each hidden layer
    channels: tuple = (8, 16, 32)  # convnet: channels of each stage
    activation: str = "relu"  # mlp: relu, sigmoid, tanh or gelu
    loss: str = "ce"  # the error: "ce" (cross-entropy) or "mse" (mean squared error)
    momentum: float = 0.0  # SGD momentum; 0: each change is exactly -lr x gradient
    batch_size: int = 16
    image_size: int = 32
    epochs: int = 10  # passes over the photos a hand-over to train.py trains in all
    seed: int = 0

    def check(self) -> "LearnSettings":
        """The settings, or a ClassifierError naming the one out of range."""
        def within(name, value, limits=None):
            low, high = limits or LIMITS[name]
            if not (isinstance(value, (int, float)) and math.isfinite(value) and low <= value <= high):
                raise ClassifierError(f"{name} must be between {low:g} and {high:g}, got {value!r}")

        if self.model not in MODELS or self.loss not in ("ce", "mse") or self.activation not in ACTIVATIONS:
            raise ClassifierError(f"model must be one of {', '.join(MODELS)}, loss ce or mse, activation one of "
                                  f"{', '.join(ACTIVATIONS)}; got {self.model!r}, {self.loss!r}, {self.activation!r}")
        for name in ("lr", "momentum", "batch_size", "image_size", "epochs"):
            within(name, getattr(self, name))
        sizes = self.hidden if self.model == "mlp" else self.channels
        within("depth" if self.model == "mlp" else "stages", len(sizes), (0 if self.model == "mlp" else 1, 6))
        for size in sizes:
            within("width", size)
        return self

    def config(self, photos: str | Path, out: str | Path, exclude: str = "") -> TrainConfig:
        """The TrainConfig of the run (resolved: every setting filled); exclude: as train.py --exclude."""
        plain = dict(augment=False, weight_decay=0.0, label_smoothing=0.0, warmup_epochs=0.0, schedule="constant",
                     ema=0.0, dropout=0.0, tta=False, tta_sizes=(), tta_below=1.0, size_from=0, time_budget=0,
                     min_steps=0, folds=0, nesterov=False, optimizer="sgd", precision="fp32", stem_stride=1,
                     blocks=0, compile=False)
        return TrainConfig(data=str(photos), out=str(out), exclude=exclude, model=self.model, lr=self.lr,
                           hidden=tuple(self.hidden), channels=tuple(self.channels), activation=self.activation,
                           loss=self.loss, momentum=self.momentum, batch_size=self.batch_size, image_size=self.image_size,
                           epochs=self.epochs, seed=self.seed, **plain).resolved()


@dataclass
class LayerChange:
    """One layer's share of a step."""

    name: str  # the module, e.g. "body.1"
    label: str  # in the article's words: "hidden layer 1", "output layer", "convolution 2", ...
    gradient: float  # size (Euclidean norm) of the error's gradient with respect to its weights and biases
    change: float  # size of the change of its weights and biases this step: after minus before
    size: float  # size of its weights and biases after the step


@dataclass
class Iteration:
    """What one step did, in the article's terms. Tensors are on the CPU."""

    iteration: int  # weight updates so far, this one included (the optimizer's step count)
    epoch: int  # passes over the photos finished before this step
    photos: torch.Tensor  # uint8 [N, h, w, 3]: the batch, as the network saw it
    labels: list[int]  # each photo's class
    outputs: torch.Tensor  # [N, classes]: the output layer's values
    probabilities: torch.Tensor  # [N, classes]: softmax of the outputs
    targets: torch.Tensor  # [N, classes]: what the outputs should have been (1 for the photo's class)
    error: float  # the run's error on this batch before the update (the loss its gradient is of)
    errors: dict[str, float]  # mean squared error and cross-entropy on this batch, for comparison
    layers: list[LayerChange]
    first_layer: torch.Tensor  # the first layer's weights as images [n, h, w, 3] after the update
    learned: torch.Tensor  # the same for the weights minus their random starting values: what training added
    diverged: str = ""  # why training cannot go on (the error is no longer a number), or ""
    validation: dict = field(default_factory=dict)  # at the end of a pass over the photos: its metrics


def layer_labels(model: nn.Module) -> dict[str, str]:
    """Each module with its own weights, named in the article's words."""
    head = model.get_classifier()
    counts, labels = {}, {}
    for name, module in model.named_modules():
        if module is head:
            labels[name] = "output layer"
        elif any(True for _ in module.parameters(recurse=False)):
            word = {"Linear": "hidden layer", "Conv2d": "convolution", "BatchNorm2d": "batch norm"}.get(
                type(module).__name__, type(module).__name__)
            counts[word] = counts.get(word, 0) + 1
            labels[name] = f"{word} {counts[word]}"
    return labels


def first_layer_weights(model: nn.Module, image_size: int) -> torch.Tensor:
    """[n, 3, h, w]: an MLP's first hidden layer, each neuron's weights on the pixels laid out as
    the photo; a convnet's first convolution, its filters."""
    first = next(m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))
    weights = first.weight.detach().cpu().clone()
    return weights if isinstance(first, nn.Conv2d) else weights.reshape(-1, 3, image_size, image_size)


def norm(tensors) -> float:
    return math.sqrt(sum(t.detach().double().square().sum().item() for t in tensors))


class Learner:
    """A training run taken one step at a time: step() is one iteration, hand_over() lets
    train.py carry on."""

    def __init__(self, run: Run, settings: LearnSettings):
        self.run, self.settings, self.state = run, settings, TrainState()
        self.batches = Batches(*run.pipeline.train_inputs, run.plan.batch_size, shuffle=True, drop_last=True,
                               passes=run.plan.passes)
        self.order = None  # this pass's batches, as train_one_epoch draws them
        self.labels = layer_labels(run.trainer.model)
        self.initial = first_layer_weights(run.trainer.model, run.preprocessing.image_size)
        self.started, self.seconds = time.perf_counter(), 0.0  # since the start; in this pass
        self.metrics: dict = {}  # of the last finished pass
        self.diverged = ""

    @classmethod
    def start(cls, photos: str | Path, out: str | Path, settings: LearnSettings = LearnSettings(),
              exclude: str = "") -> "Learner":
        """Set up a run on a folder of photos (train.py's layouts) writing to `out`, leaving out
        the photos `exclude` names (as train.py --exclude)."""
        config = settings.check().config(photos, out, exclude)
        torch.manual_seed(config.seed)  # the initial weights, as train.py draws them
        return cls(setup(config, None, distributed.start(config.device), EventLog(out)), settings)

    @property
    def model(self) -> nn.Module:
        return self.run.trainer.model

    @property
    def iteration(self) -> int:
        """Weight updates so far: the steps the learning-rate schedule has counted."""
        return self.run.trainer.scheduler.last_epoch

    def first_layer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first layer's weights as images, and their change since the start as images."""
        weights = first_layer_weights(self.model, self.run.preprocessing.image_size)
        return weight_images(weights), weight_images(weights - self.initial)

    def step(self) -> Iteration:
        """Exactly one iteration on the next batch: forward pass, error, backward pass, update.
        On one thread: a batch this small gains nothing from more, and on a busy machine their
        synchronisation made a step 50x slower (runtime.one_thread)."""
        with one_thread():
            return self._step()

    def _step(self) -> Iteration:
        if self.diverged:
            raise ClassifierError(self.diverged)
        if self.order is None:
            start_epoch(self.run.trainer, self.batches, self.state.epoch)
            self.order = iter(self.batches)
        images, labels = next(self.order)
        before = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        seen: list[Step] = []
        began, epoch = time.perf_counter(), self.state.epoch
        try:
            seeded_step(self.run.trainer, images, labels, self.state, self.run.plan, seen.append)
        except ClassifierError:
            self.diverged = ("the error is no longer a number: the weights grew without bound (diverged). "
                             "Start again with a smaller learning rate")
        self.seconds += time.perf_counter() - began
        shown = self.describe(seen[0], labels, before, epoch)
        if not self.diverged and self.state.step == len(self.batches):  # a pass over the photos is done
            self.metrics = shown.validation = end_epoch(self.run, self.state, self.seconds, self.started)
            self.order, self.seconds = None, 0.0
        return shown

    def describe(self, step: Step, labels: torch.Tensor, before: dict, epoch: int) -> Iteration:
        """The numbers of a step, read from the forward pass it saw and the weights it changed."""
        logits, classes = step.logits.detach().cpu(), step.logits.shape[1]
        indices = labels.cpu()
        parameters = dict(self.model.named_parameters())
        layers = []
        for name, label in self.labels.items():
            own = [(f"{name}.{key}" if name else key) for key, _ in
                   self.model.get_submodule(name).named_parameters(recurse=False)]
            layers.append(LayerChange(
                name, label, norm(parameters[k].grad for k in own if parameters[k].grad is not None),
                norm(parameters[k].detach() - before[k] for k in own), norm(parameters[k] for k in own)))
        preprocessing = self.run.preprocessing
        return Iteration(
            self.iteration, epoch, photos(step.inputs, preprocessing.mean, preprocessing.std), indices.tolist(),
            logits, logits.softmax(1), torch.nn.functional.one_hot(indices, classes).float(), step.loss.item(),
            {kind: compute_loss(kind, logits, indices).item() for kind in ("mse", "ce")},
            [] if self.diverged else layers, *self.first_layer(), self.diverged)

    def hand_over(self) -> Path:
        """Save last.pt so that `train.py --resume OUT/last.pt` trains on from this very step, as
        a normal run, to the settings' number of passes; returns its path."""
        if self.diverged:
            raise ClassifierError(self.diverged)
        epochs = self.run.plan.epochs
        if self.state.epoch >= epochs:
            raise ClassifierError(f"this run has already made its {epochs} passes over the photos; "
                                  f"start a new one with more")
        save(self.run, self.state, "last.pt", self.metrics, with_state=True)
        return self.run.out / "last.pt"
