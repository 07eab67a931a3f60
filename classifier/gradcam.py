"""Where the network looked in a photo: Grad-CAM, for any model in the registry.

Layers are found by running the model with a forward hook on every module: a "feature map" is
any module output of shape [1, channels, height, width] with more than one pixel, and Grad-CAM
uses the last one computed (just before global pooling): each channel weighted by the mean
gradient of the class score with respect to it, summed, positive part kept. Models without
feature maps (the MLP) get the gradient of the score with respect to each pixel instead.
Used by `explain`, `predict --explain` and `serve` (?explain=1). Drawing needs matplotlib.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from classifier.errors import ClassifierError
from classifier.images import Preprocessing
from classifier.inference import Classifier
from classifier.layers import trace_layers
from classifier.plots import figure, require_matplotlib, save_figure
from classifier.tta import model_outputs

DISPLAY_SIZE = 256  # photos are shown as the model sees them (same resize or crop), this big
HEATMAP_SIZE = (760, 400)
HEATMAP_OPACITY = 0.45  # of the heatmap's colours over the photo


def trace(model: nn.Module, forward: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, list[tuple[str, torch.Tensor]]]:
    """Call forward() with a hook on every module of model; return its logits and the feature
    maps (4-D outputs with more than one pixel) in the order they were computed, each under the
    name of the outermost module that returned it (say `features.2` rather than
    `features.2.3.relu`; layers.trace_layers)."""
    logits, layers = trace_layers(model, forward)
    return logits, [(layer.name, layer.output) for layer in layers
                    if layer.output.ndim == 4 and layer.output.shape[-2:].numel() > 1]


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
        logits, maps = trace(model, lambda: model_outputs(model, pixels, preprocessing)[0])
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


def draw_heatmap(explanation: Explanation, photo: Image.Image, classes: list[str], path: Path) -> Path:
    fig = figure(*HEATMAP_SIZE)
    left, right = fig.subplots(1, 2)
    heat = F.interpolate(explanation.heatmap[None, None], size=photo.size[::-1], mode="bilinear",
                         align_corners=False)[0, 0].clamp(0, 1)
    left.imshow(photo)
    left.set_title(class_summary(classes, explanation.probabilities), fontsize="medium")
    right.imshow(photo)
    shown = right.imshow(heat.numpy(), cmap="jet", alpha=HEATMAP_OPACITY, vmin=0, vmax=1)
    right.set_title(f"{explanation.method}\nwhere it looked for {classes[explanation.target]}",
                    fontsize="medium")
    fig.colorbar(shown, ax=right, fraction=0.046)
    for ax in (left, right):
        ax.axis("off")
    return save_figure(fig, path)


def overlay_png(explanation: Explanation, photo: Image.Image) -> bytes:
    """The photo with the heatmap over it in jet colours, as PNG bytes: the right half of
    draw_heatmap's figure without matplotlib, small enough for a web page (serve.py)."""
    heat = F.interpolate(explanation.heatmap[None, None].float(), size=photo.size[::-1], mode="bilinear",
                         align_corners=False)[0, 0].clamp(0, 1)
    jet = torch.stack([(1.5 - (4 * heat - centre).abs()).clamp(0, 1) for centre in (3, 2, 1)], dim=-1)
    pixels = torch.from_numpy(np.asarray(photo.convert("RGB"), dtype=np.float32) / 255)
    blended = (1 - HEATMAP_OPACITY) * pixels + HEATMAP_OPACITY * jet
    buffer = io.BytesIO()
    Image.fromarray((blended * 255).round().to(torch.uint8).numpy()).save(buffer, format="PNG")
    return buffer.getvalue()


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
