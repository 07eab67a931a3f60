"""The model registry: every model is built, named and saved the same way.

    model = create_model("convnet", num_classes=2, channels=(32, 64, 128))

`create_model` records its arguments in `model.model_config`, a plain dict that a checkpoint
keeps, so `create_model(**model_config)` rebuilds the same network anywhere. Every model also
has `get_classifier()` (its output layer) and `reset_classifier(num_classes)`, which is how
fine-tuning swaps the output layer for another set of classes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import nn

from classifier.errors import ClassifierError


@dataclass
class ModelEntry:
    builder: Callable[..., nn.Module]
    preprocessing: dict = field(default_factory=dict)  # what the model expects, e.g. ImageNet stats
    pretrained: bool = False  # whether pretrained weights exist for it
    recommended: dict = field(default_factory=dict)  # TrainConfig values its best recipe uses
    fixed_size: bool = False  # takes only its image size (no test-time sizes)


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, **entry_options):
    def add(builder):
        _REGISTRY[name] = ModelEntry(builder, **entry_options)
        return builder
    return add


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise ClassifierError(f"unknown model {name!r}: choose one of {', '.join(list_models())}")
    return _REGISTRY[name]


def model_arguments(name: str, settings: dict) -> dict:
    """Pick, from a dict of settings, the ones model `name` takes (by its builder's signature)."""
    accepted = inspect.signature(model_entry(name).builder).parameters
    return {k: v for k, v in settings.items()
            if k in accepted and k not in ("num_classes", "pretrained", "weights")}


def create_model(name: str, num_classes: int = 2, pretrained: bool = False, weights: str = "",
                 **kwargs) -> nn.Module:
    """Build a registered model; `pretrained` loads its pretrained weights (backbones only),
    from the file `weights` when given."""
    entry = model_entry(name)
    if (pretrained or weights) and not entry.pretrained:
        raise ClassifierError(f"model {name!r} has no pretrained weights; train it from scratch")
    if num_classes < 2:
        raise ClassifierError(f"a classifier needs at least 2 classes, got {num_classes}")
    arguments = {k: (list(v) if isinstance(v, tuple) else v) for k, v in kwargs.items()}
    try:
        model = entry.builder(num_classes=num_classes, pretrained=pretrained, weights=weights, **arguments) \
            if entry.pretrained else entry.builder(num_classes=num_classes, **arguments)
    except TypeError as error:
        raise ClassifierError(f"bad arguments for model {name!r}: {error}") from None
    model.model_config = {"name": name, "num_classes": num_classes, **arguments}
    return model


ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}


def activation_layer(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ClassifierError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class ClassifierHead:
    """get_classifier / reset_classifier for models whose output layer is `self.head`."""

    head: nn.Linear

    def get_classifier(self) -> nn.Linear:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.head.in_features, num_classes).to(self.head.weight.device)
        self.model_config["num_classes"] = num_classes


@register("mlp", fixed_size=True)
class MLP(ClassifierHead, nn.Module):
    """The article's network: every pixel is an input neuron, then fully connected layers.

    hidden: sizes of the hidden layers (empty for none: plain logistic regression on pixels).
    """

    def __init__(self, num_classes: int, image_size: int = 64, hidden: Sequence[int] = (512, 128),
                 activation: str = "relu"):
        super().__init__()
        layers, width = [nn.Flatten()], 3 * image_size * image_size
        for size in hidden:
            layers += [nn.Linear(width, size), activation_layer(activation)]
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            raise ClassifierError(
                f"this MLP takes {self.image_size}x{self.image_size} images, got "
                f"{x.shape[-2]}x{x.shape[-1]}")
        return self.head(self.body(x))


def conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """relu(x + conv(conv(x))): lets gradients reach early layers directly.

    The branch's last batch norm starts at zero, so each block starts as the identity and
    training adds to it only what helps; this keeps early training stable.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.convs = nn.Sequential(conv_bn(channels, channels),
                                   nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(channels))
        nn.init.zeros_(self.convs[-1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.convs(x))


@register("convnet")
class ConvNet(ClassifierHead, nn.Module):
    """Stages of 3x3 convolutions with batch norm, each halving the resolution.

    channels: width of each stage; blocks: residual blocks after each stage's downsampling.
    Early stages see edges and textures; later stages, with a wider view, see parts (ears,
    eyes, fur); global average pooling then a linear layer turns them into class scores.
    """

    def __init__(self, num_classes: int, channels: Sequence[int] = (32, 64, 128, 256),
                 blocks: int = 1, dropout: float = 0.2):
        super().__init__()
        stages, width = [conv_bn(3, channels[0])], channels[0]
        for c in channels:
            stage = [nn.MaxPool2d(2), conv_bn(width, c)] + [ResidualBlock(c) for _ in range(blocks)]
            stages.append(nn.Sequential(*stage))
            width = c
        self.features = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


from classifier import backbones  # noqa: E402,F401  (registers the pretrained backbones)
