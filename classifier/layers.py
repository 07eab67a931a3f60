"""A network's layers as it computes them, for any model in the registry: what each layer
outputs, in plain words what it is, and which patch of the photo one of its positions sees.

    logits, layers = trace_layers(model, lambda: model(x))
    layers[0].kind, layers[0].output.shape, layers[0].field.box(3, 5, image_size)

Every module gets a forward hook; a layer is a tensor some module returned, listed once, in the
order computed, under the name of the outermost module that returned it (a convolution block
that ends in an in-place ReLU is one layer, `features.0`, not three). Grad-CAM (gradcam.py) and
the inside view (inside.py) both read networks through this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

# What each kind of module does, in the article's words; containers (Sequential, ...) say nothing.
KINDS = {
    "Conv2d": "convolution", "Linear": "weighted sums", "BatchNorm2d": "batch norm", "MaxPool2d": "max pooling",
    "AvgPool2d": "average pooling", "AdaptiveAvgPool2d": "average of each channel", "Flatten": "in a row",
    "ReLU": "ReLU", "Sigmoid": "sigmoid", "Tanh": "tanh", "GELU": "GELU", "SiLU": "SiLU", "Hardswish": "hard swish",
    "ReLU6": "ReLU6", "ResidualBlock": "residual block", "BasicBlock": "residual block",
    "InvertedResidual": "inverted residual block", "SqueezeExcitation": "squeeze-excitation",
}
ACTIVATIONS = {"ReLU", "Sigmoid", "Tanh", "GELU", "SiLU", "Hardswish", "ReLU6"}
GEOMETRIC = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)  # modules that move or widen what a position sees


@dataclass(frozen=True)
class Field:
    """The receptive field of a layer's positions, in input pixels: position (y, x) sees the
    square of side `size` centred at start + (y, x) * jump (clipped to the image)."""

    size: int = 1
    jump: float = 1.0
    start: float = 0.0

    def then(self, module: nn.Module) -> "Field":
        """The field after one more convolution or pooling along the path."""
        kernel, stride, padding, dilation = (_first(getattr(module, name, 1))
                                             for name in ("kernel_size", "stride", "padding", "dilation"))
        if isinstance(padding, str):  # "same" or "valid"
            padding = (kernel - 1) * dilation // 2 if padding == "same" else 0
        stride = stride or kernel  # pooling's default stride
        return Field(self.size + round((kernel - 1) * dilation * self.jump), self.jump * stride,
                     self.start + ((kernel - 1) * dilation / 2 - padding) * self.jump)

    def box(self, y: int, x: int, image_size: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), pixel indices inclusive, of what position (y, x) sees."""
        half = (self.size - 1) / 2
        cy, cx = self.start + y * self.jump, self.start + x * self.jump
        clip = lambda v: int(min(max(round(v), 0), image_size - 1))  # noqa: E731
        return clip(cy - half), clip(cx - half), clip(cy + half), clip(cx + half)


def _first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


@dataclass
class Layer:
    """One layer's output for a batch, and where it comes from."""

    name: str  # the outermost module that returned it, e.g. "features.1" ("head": the output layer)
    module: nn.Module  # the innermost one: the module that computed it
    modules: list[str]  # class names of every module that returned it, innermost first
    output: torch.Tensor  # [N, channels, h, w] (a feature map) or [N, units]
    field: Field | None  # of each position of a feature map; None for [N, units]
    source: nn.Module | None  # the convolution or fully connected layer its channels come from

    @property
    def kind(self) -> str:
        """What it is, in plain words: "convolution", "batch norm + ReLU", "weighted sums", ..."""
        words = list(dict.fromkeys(KINDS[m] for m in self.modules if m in KINDS))
        return " + ".join(words) or self.modules[0]

    @property
    def is_activation(self) -> bool:
        """An activation function applied to the layer before it (not in place)."""
        return self.modules[0] in ACTIVATIONS

    @property
    def channels(self) -> int:
        return self.output.shape[1]


class _Recorder:
    """The hooks' state during one forward pass."""

    def __init__(self):
        self.layers: list[Layer] = []
        self.position: dict[int, int] = {}
        self.field, self.size = Field(), None  # the path so far: its field, and the map size it reached
        self.sources: list[nn.Module] = []  # convolutions and fully connected layers, in order run

    def start(self, module, inputs):
        if self.size is None and inputs and inputs[0].ndim == 4:
            self.size = tuple(inputs[0].shape[-2:])

    def done(self, name: str, module: nn.Module, inputs, output) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            self.sources.append(module)
        if isinstance(module, GEOMETRIC) and inputs and tuple(inputs[0].shape[-2:]) == self.size:
            self.field, self.size = self.field.then(module), tuple(output.shape[-2:])  # on the main path
        if not isinstance(output, torch.Tensor) or output.ndim not in (2, 4):
            return
        if id(output) in self.position:
            layer = self.layers[self.position[id(output)]]
            layer.name, layer.modules = name, layer.modules + [type(module).__name__]
            return
        feature_map = output.ndim == 4
        width = output.shape[1]
        source = next((m for m in reversed(self.sources)
                       if (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features) == width), None)
        self.position[id(output)] = len(self.layers)
        self.layers.append(Layer(name, module, [type(module).__name__], output,
                                 self.field if feature_map and tuple(output.shape[-2:]) == self.size else None,
                                 source))


def trace_layers(model: nn.Module, forward: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, list[Layer]]:
    """Call forward() (which runs model) with hooks on every module; return its result and the
    layers in the order computed. The root module's own output (the logits) is not a layer; the
    output layer that computed it is."""
    recorder = _Recorder()
    handles = [model.register_forward_pre_hook(recorder.start)]
    handles += [module.register_forward_hook(
        lambda module, inputs, output, name=name: recorder.done(name, module, inputs, output))
        for name, module in model.named_modules() if name]
    try:
        result = forward()
    finally:
        for handle in handles:
            handle.remove()
    return result, recorder.layers
