"""The studio's Inside page and its API: any trained run of a project, any photo, every layer
(inside.py does the work; this turns it into JSON and pictures for the page).

  GET  /projects/{project}/inside                       the page
  GET  /projects/{project}/inside/runs                  runs with a checkpoint, and the project's photos
  POST /projects/{project}/inside/look                  form: run, checkpoint (best.pt), and photo
                                                        ("class/file" of the project) or file (an
                                                        upload) -> every layer, the output layer's
                                                        values, softmax, temperature, calibrated
                                                        probabilities, the answer, Grad-CAM, neurons
  GET  /projects/{project}/inside/looks/{look}/layers/{layer}?page=N
                                                        a page of a layer's channels (or values)
  GET  /projects/{project}/inside/channel?run=&checkpoint=&layer=&channel=
                                                        its kernel and the 9 training patches that
                                                        excite it most

Opened checkpoints and recent looks are kept in memory (a few of each); after a look, every
channel's strongest responses over the training photos are found in the background, so the
first click on a channel is quick too.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import FileResponse

from classifier.errors import ClassifierError
from classifier.images import is_image_file
from classifier.inside import Inside, Look
from classifier.learn_view import number, numbers
from classifier.pictures import data_url, map_images, png_url, weight_images

STATIC = Path(__file__).with_name("static")
CHECKPOINTS = ("best.pt", "last.pt")
CHANNELS_PER_PAGE = 32
VALUES_PER_PAGE = 256
KERNEL_TILES = 16  # a deep layer's kernel: its strongest input channels shown
OPEN, LOOKS = 4, 16  # checkpoints and looks kept in memory
NAME = re.compile(r"^[^/\\\x00]+$")


def child(folder: Path, name: str, what: str) -> Path:
    """folder/name for a name a request gave: one plain component that exists, never a way out."""
    if not NAME.match(name) or name in (".", "..") or name.startswith("."):
        raise ClassifierError(f"not a {what}: {name!r}")
    path = folder / name
    if not path.exists():
        raise ClassifierError(f"no {what} named {name!r} in this project")
    return path


def run_checkpoint(project: Path, run: str, checkpoint: str) -> Path:
    if checkpoint not in CHECKPOINTS:
        raise ClassifierError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    path = child(project / "runs", run, "run") / checkpoint
    if not path.is_file():
        raise ClassifierError(f"run {run!r} has no {checkpoint} yet")
    return path


def project_photo(project: Path, photo: str) -> Path:
    """A photo of the project named "class/file"."""
    name, _, file = photo.partition("/")
    return child(child(project / "photos", name, "class"), file, "photo")


def project_photos(project: Path, per_class: int = 200) -> dict[str, list[str]]:
    """The first photos of each class, by name, for the page's picker."""
    folder = project / "photos"
    classes = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) if folder.is_dir() else []
    return {c.name: sorted(p.name for p in c.iterdir() if is_image_file(p.name))[:per_class] for c in classes}


def trained_runs(project: Path) -> list[dict]:
    """Runs with a checkpoint, newest first."""
    runs = [r for r in (project / "runs").iterdir() if r.is_dir()] if (project / "runs").is_dir() else []
    found = [(max((r / c).stat().st_mtime for c in CHECKPOINTS if (r / c).is_file()), r) for r in runs
             if any((r / c).is_file() for c in CHECKPOINTS)]
    return [{"run": r.name, "checkpoints": [c for c in CHECKPOINTS if (r / c).is_file()]}
            for _, r in sorted(found, key=lambda pair: pair[0], reverse=True)]


class Insides:
    """Checkpoints opened for looking inside, and recent looks, a few of each (least recently used go)."""

    def __init__(self):
        self.opened: OrderedDict[tuple, Inside] = OrderedDict()
        self.looks: OrderedDict[str, tuple[Inside, Look]] = OrderedDict()
        self.lock = threading.Lock()
        self.background = ThreadPoolExecutor(1, thread_name_prefix="inside")

    def open(self, checkpoint: Path, photos: Path) -> Inside:
        key = (checkpoint, checkpoint.stat().st_mtime_ns, photos)
        with self.lock:
            if key in self.opened:
                self.opened.move_to_end(key)
                return self.opened[key]
        inside = Inside.open(checkpoint, photos, device="cpu")
        with self.lock:
            self.opened[key] = inside
            while len(self.opened) > OPEN:
                self.opened.popitem(last=False)
        return inside

    def remember(self, inside: Inside, look: Look) -> str:
        name = uuid.uuid4().hex
        with self.lock:
            self.looks[name] = (inside, look)
            while len(self.looks) > LOOKS:
                self.looks.popitem(last=False)
        self.background.submit(inside.maxima)  # so that the first click on a channel is quick
        return name

    def look(self, name: str) -> tuple[Inside, Look]:
        with self.lock:
            if name not in self.looks:
                raise ClassifierError("that look is no longer kept: look at the photo again")
            return self.looks[name]


def look_json(inside: Inside, look: Look, name: str, gradcam: tuple) -> dict:
    """Everything about a look but the layers' outputs (a page of them at a time: layer_page)."""
    explanation, heatmap = gradcam
    layers = [{"index": index, "name": layer.name, "kind": layer.kind, "channels": len(layer.output),
               "height": layer.output.shape[1] if layer.output.ndim == 3 else None,
               "width": layer.output.shape[2] if layer.output.ndim == 3 else None,
               "kernel": layer.source is not None, "sees": layer.field.size if layer.field else None}
              for index, layer in enumerate(look.layers)]
    neurons = [{"layer": n.layer, "function": n.function, "weighted_sums": numbers(n.weighted_sums),
                "activations": numbers(n.activations), "curve": {"x": numbers(n.curve[0]), "y": numbers(n.curve[1])}}
               for n in inside.neurons(look)]
    return {"look": name, "photo": data_url(look.photo), "size": look.photo.shape[0], "layers": layers,
            "classes": inside.classifier.classes, "outputs": numbers(look.outputs),
            "probabilities": numbers(look.probabilities), "temperature": number(look.temperature),
            "calibrated": numbers(look.calibrated), "answer": look.answer, "neither": look.neither,
            "gradcam": png_url(heatmap),
            "gradcam_class": inside.classifier.classes[explanation.target], "neurons": neurons}


def layer_page(look: Look, layer: int, page: int) -> dict:
    """A page of a layer's output: its channels as pictures on one colour scale (a feature map),
    or its values (a layer of neurons)."""
    if not 0 <= layer < len(look.layers):
        raise ClassifierError(f"no layer {layer}: this network has layers 0 to {len(look.layers) - 1}")
    output = look.layers[layer].output
    per_page = CHANNELS_PER_PAGE if output.ndim == 3 else VALUES_PER_PAGE
    pages = -(-len(output) // per_page)
    if not 0 <= page < pages:
        raise ClassifierError(f"no page {page} of layer {layer}: it has pages 0 to {pages - 1}")
    shown = range(page * per_page, min(len(output), (page + 1) * per_page))
    answer = {"layer": layer, "page": page, "pages": pages, "first": shown.start,
              "low": number(min(0.0, output.min().item())), "high": number(output.max().item())}
    if output.ndim == 1:
        return {**answer, "values": numbers(output[shown.start:shown.stop])}
    pictures = map_images(output[shown.start:shown.stop], answer["low"], answer["high"])
    return {**answer, "channels": [{"channel": c, "image": data_url(picture), "strongest": number(output[c].max()),
                                    "average": number(output[c].mean())} for c, picture in zip(shown, pictures)]}


def kernel_json(weights, size: int) -> dict:
    """A channel's weights as the page draws them: a filter or template over the photo's colours
    as one picture, a deep filter as its strongest input channels, a neuron's weights as numbers."""
    if weights.ndim == 1:
        return {"kind": "weights", "values": numbers(weights)}
    if weights.shape[0] == 3:
        kind = "template" if weights.shape[-1] == size and weights.shape[-1] > 7 else "filter"
        return {"kind": kind, "size": weights.shape[-1], "image": data_url(weight_images(weights[None])[0])}
    strength = weights.flatten(1).norm(dim=1)
    strongest = strength.argsort(descending=True)[:KERNEL_TILES].tolist()
    tiles = weight_images(weights[strongest][:, None])
    return {"kind": "filter", "size": weights.shape[-1], "inputs": len(weights),
            "tiles": [{"input": i, "image": data_url(tile), "strength": number(strength[i])}
                      for i, tile in zip(strongest, tiles)]}


def channel_json(inside: Inside, layer: int, channel: int, photos: Path) -> dict:
    """A channel's kernel and the training patches that excite it most, each with its photo."""
    size = inside.classifier.preprocessing.image_size
    kernel = kernel_json(inside.kernel(layer, channel), size) if inside.layer(layer).source is not None else None
    patches = []
    for patch in inside.top_patches(layer, channel):
        path = Path(patch.path)
        shown = path.relative_to(photos).as_posix() if path.is_relative_to(photos) else path.name
        patches.append({"image": data_url(patch.image), "photo": shown, "class": inside.classifier.classes[patch.label],
                        "value": number(patch.value), "box": list(patch.box), "whole": data_url(patch.photo)})
    return {"layer": layer, "channel": channel, "kind": inside.layer(layer).kind, "size": size,
            "sees": inside.layer(layer).field.size if inside.layer(layer).field else size,
            "kernel": kernel, "patches": patches}


def router(project_folder: Callable[[str], Path], dependencies: list | None = None) -> APIRouter:
    """The Inside area. project_folder(name): the project's folder (raising for an unknown one);
    dependencies: of the routes that change something (a look is kept: the studio's same-origin check)."""
    api, insides = APIRouter(), Insides()

    @api.get("/projects/{project}/inside", include_in_schema=False)
    def page(project: str):
        project_folder(project)
        return FileResponse(STATIC / "inside.html")

    @api.get("/projects/{project}/inside/runs")
    def runs(project: str):
        folder = project_folder(project)
        return {"runs": trained_runs(folder), "photos": project_photos(folder)}

    @api.post("/projects/{project}/inside/look", dependencies=dependencies or [])
    def look(project: str, run: str = Form(), checkpoint: str = Form("best.pt"), photo: str = Form(""),
             file: UploadFile | None = File(None)):
        folder = project_folder(project)
        inside = insides.open(run_checkpoint(folder, run, checkpoint), folder / "photos")
        if file is not None:
            source, name = file.file.read(), file.filename or "upload"
        elif photo:
            source, name = project_photo(folder, photo), None
        else:
            raise ClassifierError("choose a photo of the project (photo=class/file) or send one (file)")
        seen = inside.look(source, name)
        return look_json(inside, seen, insides.remember(inside, seen), inside.gradcam(source, name))

    @api.get("/projects/{project}/inside/looks/{name}/layers/{layer}")
    def layer(project: str, name: str, layer: int, page: int = 0):
        project_folder(project)
        return layer_page(insides.look(name)[1], layer, page)

    @api.get("/projects/{project}/inside/channel")
    def channel(project: str, run: str, layer: int, channel: int, checkpoint: str = "best.pt"):
        folder = project_folder(project)
        inside = insides.open(run_checkpoint(folder, run, checkpoint), folder / "photos")
        return channel_json(inside, layer, channel, folder / "photos")

    return api
