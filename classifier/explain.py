"""Where the network looks and what its layers learned, for one photo:

    python -m classifier.explain cat.jpg --checkpoint checkpoints/best.pt --out explain/cat

writes, for any model in the registry:

  heatmap.png       the photo and a Grad-CAM heatmap over it (gradcam.py): the regions whose
                    features raised the predicted class's score
  feature_maps.png  the most active channels of an early, a middle and a late layer
  filters.png       the first convolution's filters: the edge and colour detectors
  templates.png     MLPs instead: the first layer's weights shown as images, the templates
                    each neuron matches the photo against

Nothing is model-specific, so the MLP, the convnet and the pretrained backbones all work.
Needs matplotlib.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

from classifier.cli import DEVICES, run_command
from classifier.errors import ClassifierError
from classifier.gradcam import (Explanation, check_explainable, class_summary, display_photo, draw_heatmap,
                                explain_image)
from classifier.images import Preprocessing
from classifier.inference import Classifier
from classifier.pictures import weight_images
from classifier.plots import figure, save_figure

FEATURE_CHANNELS, FEATURE_WIDTH, FEATURE_ROW = 8, 960, 150
GRID_COLUMNS = 8
FILTER_WIDTH, FILTER_ROW, MAX_FILTERS = 560, 70, 64
TEMPLATE_WIDTH, TEMPLATE_ROW, MAX_TEMPLATES = 800, 115, 32
TITLE_HEIGHT = 40


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
    return draw_grid(weight_images(weights), [""] * len(weights),
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
    return draw_grid(weight_images(weights), titles,
                     f"first layer's weights as images: {len(weights)} of {layer.out_features} templates",
                     TEMPLATE_WIDTH, TEMPLATE_ROW, path)


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


def class_index(classes: list[str], name: str | None) -> int | None:
    if name is None:
        return None
    if name not in classes:
        raise ClassifierError(f"no class {name!r} in this checkpoint: it has {', '.join(classes)}")
    return classes.index(name)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m classifier.explain",
        description="Show where a trained network looks in a photo (Grad-CAM) and what its layers "
                    "learned: feature maps of an early, a middle and a late layer, and the first "
                    "layer's filters (an MLP's first-layer weights as images).")
    parser.add_argument("image", help="the photo to explain")
    parser.add_argument("--checkpoint", default="checkpoints/best.pt", help="checkpoint to use (default: %(default)s)")
    parser.add_argument("--out", default="", help="folder for the PNGs (default: explain/<image name>)")
    parser.add_argument("--target", default=None, metavar="CLASS",
                        help="class whose evidence the heatmap shows (default: the predicted class)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="(default: %(default)s)")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> None:
    classifier = Classifier.load(args.checkpoint, args.device, fuse=False)
    out = args.out or f"explain/{Path(args.image).stem}"
    explanation, written = explain(classifier, args.image, out, class_index(classifier.classes, args.target))
    print(f"{class_summary(classifier.classes, explanation.probabilities)}  {args.image}")
    for path in written:
        print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    return run_command(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
