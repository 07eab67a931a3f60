"""Look inside a trained network (the studio's Inside view, the notebook, the tests).

    inside = Inside.open("project/runs/r1/best.pt", photos="project/photos")
    look = inside.look("cat.jpg")        # every layer's output for the photo, down to the output
                                         # layer's values, softmax, temperature, calibrated
                                         # probabilities and the neither answer
    inside.neurons(look)                 # an MLP's hidden neurons: weighted sum, activation, curve
    inside.kernel(3, 5)                  # the weights that compute channel 5 of layer 3
    inside.top_patches(3, 5)             # the 9 training photos' patches that excite it most
    inside.gradcam("cat.jpg")            # where it looked (gradcam.py)

Any checkpoint of the registry's models works (layers.py reads them all). The top patches need
every training photo's strongest response in every channel: computed in one pass over the
training photos the first time, then cached on disk per checkpoint and photo list (Maxima).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from classifier.checkpoint import load_checkpoint
from classifier.data import find_photos
from classifier.errors import ClassifierError
from classifier.files import atomic_save
from classifier.gradcam import Explanation, display_photo, explain_tensor, overlay_png
from classifier.images import DecodedImages, Source, cache_key, decode_images, default_cache_dir
from classifier.inference import Classifier
from classifier.layers import Layer, trace_layers
from classifier.progress import progress
from classifier.runs import relocated
from classifier.runtime import one_thread

TOP = 9  # patches shown per channel
BATCH = 64  # photos per forward pass while finding every channel's strongest responses
CURVE_POINTS = 101


@dataclass
class Look:
    """One photo through the network."""

    photo: torch.Tensor  # uint8 [S, S, 3]: the input layer, the photo as the network sees it
    layers: list[Layer]  # every layer's output for this photo ([channels, h, w] or [units]), in order
    outputs: torch.Tensor  # [classes]: the output layer's values
    probabilities: torch.Tensor  # softmax of the outputs
    temperature: float  # the outputs are divided by it before the softmax: honest probabilities
    calibrated: torch.Tensor  # softmax(outputs / temperature)
    answer: str  # a class name, or "neither" when the photo shows none of the classes
    neither: bool | None  # None: the run has no neither rule


@dataclass
class Neurons:
    """A fully connected hidden layer, neuron by neuron, for one photo."""

    layer: int  # index of its weighted sums in Look.layers (its activations are the next layer)
    function: str  # the activation function: "ReLU", "sigmoid", ...
    weighted_sums: torch.Tensor  # [units]: each neuron's inputs times its weights, plus its bias
    activations: torch.Tensor  # [units]: the function of each weighted sum
    curve: torch.Tensor  # [2, CURVE_POINTS]: the function over the weighted sums' range (x; f(x))


@dataclass
class Patch:
    """A piece of a training photo that excites a channel."""

    path: str  # the training photo
    label: int  # its class
    value: float  # the channel's strongest response in that photo
    box: tuple[int, int, int, int]  # (top, left, bottom, right), inclusive, in the decoded photo
    image: torch.Tensor  # uint8 [h, w, 3]: the patch
    photo: torch.Tensor  # uint8 [S, S, 3]: the whole photo, as the network sees it


@dataclass
class Maxima:
    """Every training photo's strongest response in every channel of every layer."""

    decoded: DecodedImages  # the training photos as the network sees them
    values: list[torch.Tensor]  # per layer: [photos, channels] float32
    positions: list[torch.Tensor]  # per layer: [photos, channels] int32, the flat index of the strongest position


class Inside:
    """A trained checkpoint, opened to look inside; `layers` describes its layers (their outputs
    for a blank photo), in the order of every Look's. Safe to share between threads: a forward
    pass with hooks on every module runs one at a time."""

    def __init__(self, classifier: Classifier, path: Path, photos: str | None, config: dict,
                 cache_dir: str | None = default_cache_dir()):
        self.classifier, self.path, self.photos, self.config, self.cache_dir = classifier, path, photos, config, cache_dir
        self.tracing, self.finding = threading.Lock(), threading.Lock()  # one traced pass; one search of the photos
        size = classifier.preprocessing.image_size
        with torch.inference_mode(), one_thread():
            _, self.layers = self.trace(torch.zeros(1, 3, size, size, dtype=torch.uint8))
        self._maxima: Maxima | None = None

    @classmethod
    def open(cls, checkpoint: str | Path, photos: str | Path | None = None, device: str = "auto",
             cache_dir: str | None = default_cache_dir()) -> "Inside":
        """A .pt checkpoint; `photos`: the folder it was trained on (default: the one it names)."""
        classifier = Classifier.load(checkpoint, device, precision="fp32", fuse=False)
        if not isinstance(classifier.model, nn.Module):
            raise ClassifierError(f"{checkpoint}: looking inside needs the PyTorch checkpoint (.pt), not an export")
        config = relocated(load_checkpoint(checkpoint), checkpoint)
        return cls(classifier, Path(checkpoint), str(photos or config.get("data") or "") or None, config, cache_dir)

    @property
    def model(self) -> nn.Module:
        return self.classifier.model

    def trace(self, images: torch.Tensor) -> tuple[torch.Tensor, list[Layer]]:
        """uint8 photos [N, 3, S, S] -> (output layer's values, every layer) in one forward pass."""
        inputs = self.classifier.preprocessing.normalize(images.to(self.classifier.device))
        with self.tracing:
            return trace_layers(self.model, lambda: self.model(inputs))

    def look(self, source: Source, name: str | None = None) -> Look:
        """One photo (a path, PIL image or a file's bytes named `name`) through the network."""
        image = self.classifier.preprocessing.decode(source, name)
        with torch.inference_mode(), one_thread():  # one photo: more threads only wait on each other
            logits, layers = self.trace(image[None])
            calibrated, scores = self.classifier.outputs(image[None], tta=False)
        logits = logits[0].float().cpu()
        neither = None if scores is None else bool(self.classifier.neither.is_neither(scores)[0])
        answer = "neither" if neither else self.classifier.classes[int(logits.argmax())]
        shown = [Layer(layer.name, layer.module, layer.modules, layer.output[0].float().cpu(), layer.field, layer.source)
                 for layer in layers]
        return Look(image.permute(1, 2, 0), shown, logits, logits.softmax(0), self.classifier.temperature,
                    calibrated[0], answer, neither)

    def neurons(self, look: Look) -> list[Neurons]:
        """Each fully connected hidden layer followed by an activation function (an MLP's)."""
        found = []
        for index, (sums, after) in enumerate(zip(look.layers, look.layers[1:])):
            if isinstance(sums.module, nn.Linear) and after.is_activation and after.output.shape == sums.output.shape:
                low, high = min(sums.output.min().item(), -1.0), max(sums.output.max().item(), 1.0)
                margin = 0.1 * (high - low)
                xs = torch.linspace(low - margin, high + margin, CURVE_POINTS)
                with torch.inference_mode():
                    ys = after.module(xs.clone()).float()
                found.append(Neurons(index, after.kind, sums.output, after.output, torch.stack([xs, ys])))
        return found

    def kernel(self, layer: int, channel: int) -> torch.Tensor:
        """The weights that compute a channel: [inputs, k, k] of a convolution, [inputs] of a
        fully connected layer ([3, S, S] when its inputs are the pixels)."""
        source = self.layer(layer).source
        if source is None:
            raise ClassifierError(f"layer {layer} ({self.layers[layer].kind}) has no weights of its own")
        weights = source.weight[self.channel(layer, channel)].detach().float().cpu()
        size = self.classifier.preprocessing.image_size
        return weights.reshape(3, size, size) if weights.shape == (3 * size * size,) else weights

    def layer(self, index: int) -> Layer:
        if not 0 <= index < len(self.layers):
            raise ClassifierError(f"no layer {index}: this network has layers 0 to {len(self.layers) - 1}")
        return self.layers[index]

    def channel(self, layer: int, channel: int) -> int:
        count = self.layer(layer).channels
        if not 0 <= channel < count:
            raise ClassifierError(f"no channel {channel} in layer {layer}: it has channels 0 to {count - 1}")
        return channel

    def gradcam(self, source: Source, name: str | None = None, target: int | None = None) -> tuple[Explanation, bytes]:
        """Grad-CAM for a photo (gradcam.py), and the photo with the heatmap over it as PNG bytes."""
        image = self.classifier.preprocessing.decode(source, name)
        with self.tracing, one_thread():
            explanation = explain_tensor(self.model, self.classifier.preprocessing, image, target,
                                         self.classifier.temperature)
            return explanation, overlay_png(explanation, display_photo(self.classifier, source))

    def top_patches(self, layer: int, channel: int, count: int = TOP) -> list[Patch]:
        """The `count` training photos in which a channel responds most strongly, each cut to
        the patch its strongest position sees (the whole photo for a layer without positions)."""
        info, channel = self.layer(layer), self.channel(layer, channel)
        maxima = self.maxima()
        values = maxima.values[layer][:, channel]
        size = self.classifier.preprocessing.image_size
        patches = []
        for index in values.topk(min(count, len(values))).indices.tolist():
            box = (0, 0, size - 1, size - 1)
            if info.field is not None:
                y, x = divmod(int(maxima.positions[layer][index, channel]), info.output.shape[-1])
                box = info.field.box(y, x, size)
            top, left, bottom, right = box
            photo = maxima.decoded.images[index].permute(1, 2, 0)
            patches.append(Patch(maxima.decoded.paths[index], int(maxima.decoded.labels[index]),
                                 float(values[index]), box, photo[top:bottom + 1, left:right + 1].clone(), photo.clone()))
        return patches

    def maxima(self) -> Maxima:
        """Every training photo's strongest response per channel: from the cache, or one pass."""
        with self.finding:
            if self._maxima is None:
                self._maxima = self.find_maxima()
        return self._maxima

    def find_maxima(self) -> Maxima:
        decoded = self.training_photos()
        cache = self.maxima_file(decoded)
        saved = load_maxima(cache, decoded, len(self.layers)) if cache else None
        if saved is None:
            saved = self.strongest_responses(decoded)
            if cache:
                atomic_save({"values": saved[0], "positions": saved[1]}, cache)
        return Maxima(decoded, *saved)

    def training_photos(self) -> DecodedImages:
        """The photos the run trained on (its split of the photos folder), decoded as it sees them."""
        if not self.photos:
            raise ClassifierError(f"{self.path}: does not say which photos it was trained on")
        config = self.config
        dataset, _ = find_photos(self.photos, config.get("val_fraction", 0.2), config.get("seed", 0),
                                 config.get("exclude", ""))
        preprocessing = self.classifier.preprocessing
        return decode_images(dataset.train.paths, dataset.train.labels, preprocessing, self.cache_dir,
                             desc="decoding the training photos")

    def maxima_file(self, decoded: DecodedImages) -> Path | None:
        if not self.cache_dir:
            return None
        weights = hashlib.sha256(self.path.read_bytes()).hexdigest()[:16]
        photos = cache_key(decoded.paths, decoded.labels.tolist(), self.classifier.preprocessing)
        return Path(self.cache_dir) / f"inside-{weights}-{photos}.pt"

    def strongest_responses(self, decoded: DecodedImages) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One forward pass over the photos: each channel's largest value in each photo, and where.
        On one thread: in the studio it shares the machine with training runs and the page, and
        there two threads waiting on each other took twice as long (benchmarks/learn.py)."""
        values, positions = [[] for _ in self.layers], [[] for _ in self.layers]
        for start in progress(range(0, len(decoded), BATCH), "strongest responses of each channel", unit="batch"):
            with torch.inference_mode(), one_thread():
                _, layers = self.trace(decoded.images[start:start + BATCH])
            for index, layer in enumerate(layers):
                output = layer.output.float()
                if output.ndim == 4:
                    value, position = output.flatten(2).max(2)
                else:
                    value, position = output, torch.zeros_like(output, dtype=torch.long)
                values[index].append(value.cpu())
                positions[index].append(position.int().cpu())
        return [torch.cat(v) for v in values], [torch.cat(p) for p in positions]


def load_maxima(path: Path, decoded: DecodedImages, layers: int):
    """(values, positions) from a cache file, or None if it is missing or does not fit."""
    try:
        saved = torch.load(path, weights_only=True)
    except Exception:  # missing or unreadable: computed again, never trusted
        return None
    fits = len(saved["values"]) == layers and all(len(v) == len(decoded) for v in saved["values"])
    return (saved["values"], saved["positions"]) if fits else None
