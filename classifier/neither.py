"""The "neither" answer: a photo of a car should not come back "dog 71%".

A rule is plain data stored in the checkpoint, {"method", "threshold"}; a photo whose known
score is below the threshold shows none of the trained classes.

  imagenet  (pretrained backbones trained on cats and dogs) the model's original ImageNet
            classifier is asked whether any of its cat or dog classes is among its
            IMAGENET_TOP most likely guesses for the photo; if none is, the answer is "neither".
            (Chosen over a threshold on P(any cat or dog class), which ImageNet's 1000 classes
            spread thin: on train/ at 272 px, "P < 0.2" flagged 37 of 2,000 cat and dog photos
            and 18 of the 19 photos of ../shared/data/neither, "none in the top 5" 17 and 19.)
  energy    (every other model) the score is logsumexp of the logits, high for inputs like
            the training data; the threshold sits just below the lowest score of any
            validation photo, so no validation photo is flagged (a conservative rule).
"""

from __future__ import annotations

import torch

IMAGENET_CATS_AND_DOGS = range(151, 294)  # dog breeds 151-268, wolves and foxes, cats 281-293
IMAGENET_TOP = 5
IMAGENET_THRESHOLD = 0.0  # on imagenet_score: a cat or dog class among the IMAGENET_TOP best guesses


def energy_score(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp of the logits (minus the energy): higher for inputs like the training data."""
    return logits.float().logsumexp(1)


def imagenet_score(imagenet_logits: torch.Tensor) -> torch.Tensor:
    """The original ImageNet classifier's logit of its most likely cat or dog class minus its
    IMAGENET_TOP-th largest logit: the log of how many times likelier that class is than the
    IMAGENET_TOP-th guess; >= 0 exactly when a cat or dog class is among the top guesses."""
    logits = imagenet_logits.float()
    best_known = logits[:, IMAGENET_CATS_AND_DOGS].max(1).values
    return best_known - logits.topk(IMAGENET_TOP, dim=1).values[:, -1]


def is_cats_and_dogs(classes: list[str]) -> bool:
    """The classes the project's ImageNet neither rule is made for ."""
    return sorted(c.lower() for c in classes) == ["cat", "dog"]


def neither_rule(model, classes: list[str], val_logits: torch.Tensor) -> dict:
    """How predict flags photos that are neither class: {"method", "threshold"}."""
    if hasattr(model, "forward_all") and is_cats_and_dogs(classes):
        return {"method": "imagenet", "threshold": IMAGENET_THRESHOLD}
    scores = energy_score(val_logits)
    margin = 0.01 * (scores.max() - scores.min()).item() if len(scores) > 1 else 0.0
    return {"method": "energy", "threshold": scores.min().item() - margin if len(scores) else float("-inf")}


def uses_imagenet(rule: dict | None) -> bool:
    """Whether the rule needs the ImageNet head's logits (Backbone.forward_all)."""
    return bool(rule) and rule["method"] == "imagenet"


def known_scores(rule: dict, logits: torch.Tensor, imagenet_logits: torch.Tensor | None) -> torch.Tensor:
    """How much each photo looks like the trained classes, on the rule's scale."""
    return imagenet_score(imagenet_logits) if uses_imagenet(rule) else energy_score(logits)
