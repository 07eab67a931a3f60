"""The studio's Inside tab and its API: any trained run of a project, any photo, every layer
(inside.py does the work; this turns it into JSON and pictures for the page).

  GET  /api/projects/ID/inside/photos                 the project's photos, by class, for the picker
  POST /api/projects/ID/inside/look                   form: run, checkpoint (best.pt), and photo
                                                      ("CLASS/FILE" of the project) or file (an
                                                      upload) -> every layer, the output layer's
                                                      values, softmax, temperature, calibrated
                                                      probabilities, the answer, Grad-CAM, neurons
  GET  /api/projects/ID/inside/looks/LOOK/layers/N?page=P
                                                      a page of a layer's channels (or values)
  GET  /api/projects/ID/inside/channel?run=&checkpoint=&layer=&channel=
                                                      its weights and the 9 training patches that
                                                      excite it most

Opened checkpoints and recent looks are kept in memory (a few of each). Every channel's strongest
responses over the training photos (what the top patches need: one pass, then cached on disk) are
found in the background when a studio training run finishes, and after a look at a run not
prepared so, so that the first click on a channel is quick too.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import APIRouter, Depends, File, Form, UploadFile

from classifier.errors import ClassifierError
from classifier.inside import Inside, Look
from classifier.jobs import Job
from classifier.learn_view import number, numbers
from classifier.pictures import data_url, map_images, png_url, weight_images
from classifier.projects import Project
from classifier.web import Area, changes_state
from classifier.workspace import Opened

CHECKPOINTS = ("best.pt", "last.pt")
CHANNELS_PER_PAGE = 32
VALUES_PER_PAGE = 256
KERNEL_TILES = 16  # a deep layer's kernel: its strongest input channels shown
OPEN, LOOKS = 4, 16  # checkpoints and looks kept in memory


def run_checkpoint(project: Project, run: str, checkpoint: str) -> Path:
    """A run's best.pt or last.pt (names checked by projects.py: never a way out of the project)."""
    if checkpoint not in CHECKPOINTS:
        raise ClassifierError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    path = project.run_folder(run) / checkpoint
    if not path.is_file():
        raise ClassifierError(f"run {run!r} has no {checkpoint} yet")
    return path


def project_photos(project: Project, per_class: int = 200) -> dict[str, list[str]]:
    """The first photos of each class, as CLASS/FILE, for the page's picker."""
    return {c["name"]: [p["path"] for p in project.photos(c["name"], limit=per_class)["photos"]]
            for c in project.classes()}


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
        self.background.submit(inside.maxima)  # so that the first click on a channel is quick (if not prepared)
        return name

    def prepare(self, checkpoint: Path, photos: Path) -> None:
        """In the background: every channel's strongest responses over the training photos (the
        top patches' one pass, then cached on disk), so that the first click on a channel is
        quick. Nothing is raised here: a failure is left to the click, which reports it."""
        self.background.submit(lambda: self.open(checkpoint, photos).maxima())

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


INSIDES = Insides()


def prepare_trained_run(job: Job) -> None:
    """A studio training job finished (jobs.Jobs.when_finished): its best.pt's top patches are
    prepared now, not at the first click on a channel."""
    if job.kind == "train" and (Path(job.folder) / "best.pt").is_file():
        INSIDES.prepare(Path(job.folder) / "best.pt", Path(job.folder).parents[1] / "photos")


inside = APIRouter(prefix="/api/projects/{project_id}/inside", dependencies=[Depends(changes_state)])


@inside.get("/photos")
def photos(project: Opened):
    return project_photos(project)


@inside.post("/look")
def look(project: Opened, run: str = Form(), checkpoint: str = Form("best.pt"), photo: str = Form(""),
         file: UploadFile | None = File(None)):
    opened = INSIDES.open(run_checkpoint(project, run, checkpoint), project.set_folder())
    if file is not None:
        source, name = file.file.read(), file.filename or "upload"
    elif photo:
        source, name = project.photo_path(photo), None
    else:
        raise ClassifierError("choose a photo of the project (photo=CLASS/FILE) or send one (file)")
    seen = opened.look(source, name)
    return look_json(opened, seen, INSIDES.remember(opened, seen), opened.gradcam(source, name))


@inside.get("/looks/{name}/layers/{layer}")
def layer(project: Opened, name: str, layer: int, page: int = 0):
    return layer_page(INSIDES.look(name)[1], layer, page)


@inside.get("/channel")
def channel(project: Opened, run: str, layer: int, channel: int, checkpoint: str = "best.pt"):
    opened = INSIDES.open(run_checkpoint(project, run, checkpoint), project.set_folder())
    return channel_json(opened, layer, channel, project.set_folder())


INSIDE = Area("inside", inside, tab="Inside", scripts=["inside.js"])
