"""Every model in the registry: the article's MLP and the from-scratch ConvNet here, and the
pretrained backbones of backbones.py (imported here, so importing this module registers them all).

    from classifier.models import create_model, list_models
    model = create_model("convnet", num_classes=2, channels=(32, 64, 128))
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from classifier.backbones import efficientnet_lite0, mobilenet_v3_large, resnet18  # noqa: F401  (registers them)
from classifier.errors import ClassifierError
from classifier.registry import ClassifierHead, create_model, list_models, model_arguments, model_entry, register

__all__ = ["create_model", "list_models", "model_arguments", "model_entry", "MLP", "ConvNet"]


ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}


def activation_layer(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ClassifierError(f"unknown activation {name!r}: choose one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


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


def conv_bn(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c_out),
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
    """A 3x3 stem, then stages of 3x3 convolutions with batch norm, each halving the resolution.

    channels: width of each stage; blocks: residual blocks after each stage's downsampling.
    stem_stride 2: the stem itself halves the resolution, so the first stage neither pools nor
    (when its width is the stem's) changes width: no work at full resolution, where activations
    are largest and a CPU spends its time moving memory rather than computing.
    Early stages see edges and textures; later stages, with a wider view, see parts (ears,
    eyes, fur); global average pooling then a linear layer turns them into class scores.
    """

    def __init__(self, num_classes: int, channels: Sequence[int] = (32, 64, 128, 256),
                 blocks: int = 1, dropout: float = 0.2, stem_stride: int = 1):
        super().__init__()
        stages, width = [conv_bn(3, channels[0], stem_stride)], channels[0]
        for index, c in enumerate(channels):
            pooled = not (index == 0 and stem_stride == 2)
            stage = ([nn.MaxPool2d(2)] if pooled else []) + ([conv_bn(width, c)] if pooled or width != c else [])
            stages.append(nn.Sequential(*stage, *[ResidualBlock(c) for _ in range(blocks)]))
            width = c
        self.features = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))
