"""The model registry: every model is built, named and saved the same way.

    model = create_model("convnet", num_classes=2, channels=(32, 64, 128))

A model module registers its builders with `@register(name, ...)`; `classifier.models` imports
them all, so import `create_model` from there to see every model. `create_model` records its
arguments in `model.model_config`, a plain dict that a checkpoint keeps, so
`create_model(**model_config)` rebuilds the same network anywhere. Every model also has
`get_classifier()` (its output layer) and `reset_classifier(num_classes)`, which is how
fine-tuning swaps the output layer for another set of classes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Callable

from torch import nn

from classifier.errors import ClassifierError


@dataclass
class ModelEntry:
    builder: Callable[..., nn.Module]
    preprocessing: dict = field(default_factory=dict)  # what the model expects, e.g. ImageNet stats
    pretrained: bool = False  # whether pretrained weights exist for it
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


class ClassifierHead:
    """get_classifier / reset_classifier for models whose output layer is `self.head`."""

    head: nn.Linear

    def get_classifier(self) -> nn.Linear:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.head = nn.Linear(self.head.in_features, num_classes).to(self.head.weight.device)
        self.model_config["num_classes"] = num_classes
