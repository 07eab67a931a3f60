"""Where the network looks and what its layers learned, for one photo.

    python -m classifier.explain cat.jpg --checkpoint checkpoints/best.pt --out explain/cat

writes, for any model in the registry:

  heatmap.png       the photo and a Grad-CAM heatmap over it: the regions whose features raised
                    the predicted class's score (models without feature maps, like the MLP, get
                    the gradient of that score with respect to each pixel instead)
  feature_maps.png  the most active channels of an early, a middle and a late layer
  filters.png       the first convolution's filters: the edge and colour detectors
  templates.png     MLPs instead: the first layer's weights shown as images, the templates
                    each neuron matches the photo against

Layers are found by running the model with a forward hook on every module: a "feature map"
is any module output of shape [1, channels, height, width] with more than one pixel, and
Grad-CAM uses the last one computed (just before global pooling). Nothing is model-specific,
so the MLP, the convnet and the pretrained backbones all work. Needs matplotlib.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from classifier.data import Preprocessing
from classifier.errors import ClassifierError
from classifier.predict import Classifier, logits_for
from classifier.report import figure, require_matplotlib, save_figure

DISPLAY_SIZE = 256  # photos are shown as the model sees them (same resize or crop), this big
HEATMAP_SIZE = (760, 400)
FEATURE_CHANNELS, FEATURE_WIDTH, FEATURE_ROW = 8, 960, 150
GRID_COLUMNS = 8
FILTER_WIDTH, FILTER_ROW, MAX_FILTERS = 560, 70, 64
TEMPLATE_WIDTH, TEMPLATE_ROW, MAX_TEMPLATES = 800, 115, 32
TITLE_HEIGHT = 40


def trace(model: nn.Module, forward: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """Call forward() with a hook on every module of model; return its logits and the feature
    maps (4-D outputs with more than one pixel) in the order they were computed.

    A container returns its last child's tensor: each tensor is listed once, under the name of
    the outermost module that returned it (say `features.2` rather than `features.2.3.relu`).
    """
    recorded: list[list] = []
    position: dict[int, int] = {}

    def hook(name, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-2:].numel() > 1:
            if id(output) in position:
                recorded[position[id(output)]][0] = name
            else:
                position[id(output)] = len(recorded)
                recorded.append([name, output])

    handles = [module.register_forward_hook(lambda module, inputs, output, name=name: hook(name, output))
               for name, module in model.named_modules() if name]
    try:
        logits = forward()
    finally:
        for handle in handles:
            handle.remove()
    return logits, [(name, output) for name, output in recorded]


@dataclass
class Explanation:
    """What explain found for one image."""

    probabilities: torch.Tensor  # [classes]
    target: int  # the class the heatmap explains
    heatmap: torch.Tensor  # [h, w] in [0, 1], at the resolution of the layer it was taken from
    method: str  # "Grad-CAM on <layer>" or "gradient saliency"
    feature_maps: list[tuple[str, torch.Tensor]]  # [(layer name, [channels, h, w])]


def explain_tensor(model: nn.Module, preprocessing: Preprocessing, image: torch.Tensor,
                   target: int | None = None, temperature: float = 1.0) -> Explanation:
    """Grad-CAM for one uint8 image [3, S, S] (the predicted class unless target is given).

    Grad-CAM weighs each channel of the last feature map by the mean gradient of the class
    score with respect to it, sums, and keeps the positive part: where the features that
    raised the score are. Without feature maps: |d score / d pixel|, the largest over colours.
    """
    device = next(model.parameters()).device
    pixels = image.to(device).float().div(255)[None].requires_grad_()
    with torch.enable_grad():
        logits, maps = trace(model, lambda: logits_for(model, pixels, preprocessing))
        target = int(logits[0].argmax()) if target is None else target
        score = logits[0, target]
        if maps:
            name, activation = maps[-1]
            gradient, = torch.autograd.grad(score, activation)
            cam = (gradient.mean(dim=(2, 3), keepdim=True) * activation).sum(dim=1)[0].relu()
            method = f"Grad-CAM on {name}"
        else:
            gradient, = torch.autograd.grad(score, pixels)
            cam, method = gradient[0].abs().amax(dim=0), "gradient saliency"
    cam = cam.detach().cpu()
    peak = cam.max()
    return Explanation((logits[0].detach().cpu() / temperature).softmax(dim=0), target,
                       cam / peak if peak > 0 else cam, method,
                       [(name, output[0].detach().cpu()) for name, output in maps])


def explain_image(classifier: Classifier, source, target: int | None = None) -> Explanation:
    return explain_tensor(classifier.model, classifier.preprocessing,
                          classifier.preprocessing.decode(source), target, classifier.temperature)


def display_photo(classifier: Classifier, source) -> Image.Image:
    """The photo as the model sees it (same resize or crop), DISPLAY_SIZE pixels square."""
    shown = Preprocessing(**{**classifier.preprocessing.to_dict(), "image_size": DISPLAY_SIZE})
    return Image.fromarray(shown.decode(source).permute(1, 2, 0).numpy())


def class_summary(classes: list[str], probabilities: torch.Tensor, top: int = 3) -> str:
    ranked = probabilities.argsort(descending=True)[:top].tolist()
    return ", ".join(f"{classes[i]} {probabilities[i].item():.1%}" for i in ranked)


# --------------------------------------------------------------------------- the figures


def draw_heatmap(explanation: Explanation, photo: Image.Image, classes: list[str], path: Path) -> Path:
    fig = figure(*HEATMAP_SIZE)
    left, right = fig.subplots(1, 2)
    heat = F.interpolate(explanation.heatmap[None, None], size=photo.size[::-1], mode="bilinear",
                         align_corners=False)[0, 0].clamp(0, 1)
    left.imshow(photo)
    left.set_title(class_summary(classes, explanation.probabilities), fontsize="medium")
    right.imshow(photo)
    shown = right.imshow(heat.numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
    right.set_title(f"{explanation.method}\nwhere it looked for {classes[explanation.target]}",
                    fontsize="medium")
    fig.colorbar(shown, ax=right, fraction=0.046)
    for ax in (left, right):
        ax.axis("off")
    return save_figure(fig, path)


def pick_layers(feature_maps: list[tuple[str, torch.Tensor]]) -> list[tuple[str, str, torch.Tensor]]:
    """(position, name, map) for an early, a middle and a late layer: the last layer computed
    at the first, the middle and the last of the resolutions the network passes through."""
    sizes = list(dict.fromkeys(tuple(m.shape[-2:]) for _, m in feature_maps))
    chosen = dict.fromkeys([0, len(sizes) // 2, len(sizes) - 1])
    picked = []
    for index in chosen:
        name, tensor = [(n, m) for n, m in feature_maps if tuple(m.shape[-2:]) == sizes[index]][-1]
        position = "early" if index == 0 else "late" if index == len(sizes) - 1 else "middle"
        picked.append((position, name, tensor))
    return picked


def draw_feature_maps(feature_maps: list[tuple[str, torch.Tensor]], path: Path) -> Path:
    """Each picked layer's most active channels for this photo, one row per layer."""
    layers = pick_layers(feature_maps)
    fig = figure(FEATURE_WIDTH, FEATURE_ROW * len(layers) + TITLE_HEIGHT)
    fig.suptitle("feature maps: the most active channels of an early, a middle and a late layer")
    axes = fig.subplots(len(layers), FEATURE_CHANNELS, squeeze=False)
    for row, (position, name, maps) in zip(axes, layers):
        strongest = maps.mean(dim=(1, 2)).argsort(descending=True)[:FEATURE_CHANNELS].tolist()
        for ax in row:
            ax.set(xticks=[], yticks=[])
            ax.spines[:].set_visible(False)
        for ax, channel in zip(row, strongest):
            ax.imshow(maps[channel].numpy(), cmap="viridis")
            ax.set_title(f"ch {channel}", fontsize="small")
        row[0].set_ylabel(f"{position}\n{name}\n{maps.shape[0]} ch {maps.shape[1]}x{maps.shape[2]}",
                          fontsize="small")
    return save_figure(fig, path)


def _weight_images(weights: torch.Tensor) -> torch.Tensor:
    """[n, c, h, w] weights -> [n, h, w, 3 or 1] images in [0, 1], zero at gray: each image is
    scaled by its own largest magnitude, so its sign pattern (light vs dark) shows."""
    weights = weights.detach().float().cpu()
    if weights.shape[1] != 3:
        weights = weights[:, :1]  # not RGB (say, a grouped convolution): its first input channel
    scale = weights.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return (0.5 + 0.5 * weights / scale).permute(0, 2, 3, 1)


def draw_grid(images: torch.Tensor, titles: list[str], title: str, width: int, row_height: int,
              path: Path) -> Path:
    rows = -(-len(images) // GRID_COLUMNS)
    fig = figure(width, row_height * rows + TITLE_HEIGHT)
    fig.suptitle(title)
    for index, ax in enumerate(fig.subplots(rows, GRID_COLUMNS, squeeze=False).flat):
        ax.axis("off")
        if index < len(images):
            image = images[index]
            ax.imshow(image.numpy() if image.shape[-1] == 3 else image[..., 0].numpy(),
                      cmap=None if image.shape[-1] == 3 else "gray", vmin=0, vmax=1,
                      interpolation="nearest")
            if titles[index]:
                ax.set_title(titles[index], fontsize="small")
    return save_figure(fig, path)


def first_module(model: nn.Module, kind: type, accept=lambda module: True) -> nn.Module | None:
    return next((m for m in model.modules() if isinstance(m, kind) and accept(m)), None)


def draw_filters(model: nn.Module, path: Path) -> Path | None:
    """The first convolution's filters as small images (none if the model has no convolution)."""
    conv = first_module(model, nn.Conv2d)
    if conv is None:
        return None
    weights = conv.weight[:MAX_FILTERS]
    kernel = "x".join(map(str, weights.shape[-2:]))
    return draw_grid(_weight_images(weights), [""] * len(weights),
                     f"first layer: {len(weights)} of {conv.out_channels} filters, {kernel} pixels",
                     FILTER_WIDTH, FILTER_ROW, path)


def draw_templates(model: nn.Module, preprocessing: Preprocessing, classes: list[str], path: Path) -> Path | None:
    """An MLP's first layer: each neuron's weights on the pixels, shown as an image."""
    size = preprocessing.image_size
    layer = first_module(model, nn.Linear, lambda m: m.in_features == 3 * size * size)
    if layer is None:
        return None
    weights = layer.weight[:MAX_TEMPLATES].reshape(-1, 3, size, size)
    is_output = hasattr(model, "get_classifier") and model.get_classifier() is layer
    titles = classes[:len(weights)] if is_output else [f"neuron {i}" for i in range(len(weights))]
    return draw_grid(_weight_images(weights), titles,
                     f"first layer's weights as images: {len(weights)} of {layer.out_features} templates",
                     TEMPLATE_WIDTH, TEMPLATE_ROW, path)


# --------------------------------------------------------------------------- entry points


def explain(classifier: Classifier, source, out: str | Path, target: int | None = None) -> tuple[Explanation, list[Path]]:
    """Write heatmap.png and whichever of feature_maps.png, filters.png, templates.png apply."""
    check_explainable(classifier)
    out = Path(out)
    explanation = explain_image(classifier, source, target)
    written = [draw_heatmap(explanation, display_photo(classifier, source), classifier.classes,
                            out / "heatmap.png")]
    if explanation.feature_maps:
        written.append(draw_feature_maps(explanation.feature_maps, out / "feature_maps.png"))
    written.append(draw_filters(classifier.model, out / "filters.png"))
    written.append(draw_templates(classifier.model, classifier.preprocessing, classifier.classes,
                                  out / "templates.png"))
    return explanation, [p for p in written if p is not None]


def check_explainable(classifier: Classifier) -> None:
    """Explaining needs gradients: a PyTorch model, not an exported ONNX one."""
    require_matplotlib()
    if not isinstance(classifier.model, nn.Module):
        raise ClassifierError("explaining needs the PyTorch checkpoint (.pt) the model was exported "
                              "from: an exported model gives no gradients or feature maps")


class HeatmapWriter:
    """Writes folder/<image name>.png, a heatmap figure, for each photo predict classifies."""

    def __init__(self, classifier: Classifier, folder: str | Path):
        check_explainable(classifier)
        self.classifier, self.folder, self.used = classifier, Path(folder), set()

    def write(self, source: str) -> Path:
        stem, number = Path(source).stem, 1
        name = stem
        while name in self.used:  # photos of the same name in different folders
            number += 1
            name = f"{stem}-{number}"
        self.used.add(name)
        return draw_heatmap(explain_image(self.classifier, source),
                            display_photo(self.classifier, source), self.classifier.classes,
                            self.folder / f"{name}.png")


def class_index(classes: list[str], name: str | None) -> int | None:
    if name is None:
        return None
    if name not in classes:
        raise ClassifierError(f"no class {name!r} in this checkpoint: it has {', '.join(classes)}")
    return classes.index(name)


if __name__ == "__main__":
    from classifier.cli import explain_main

    sys.exit(explain_main())
