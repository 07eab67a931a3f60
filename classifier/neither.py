"""The "neither" answer: a photo of a car should not come back "dog 71%".

A rule is plain data stored in the checkpoint, {"method", "threshold"}; a photo whose known
score is below the threshold shows none of the trained classes.

  imagenet  (pretrained backbones trained on cats and dogs) the photo is neither when the model's
            original ImageNet classifier has none of its cat or dog classes among its IMAGENET_TOP
            most likely guesses AND the photo looks unlike every training photo: the cosine
            similarity of the original network's pooled features to the nearest training photo's
            (the "bank" the checkpoint keeps) is below the rule's "similar" (IMAGENET_SIMILAR).
            The top-5 test alone flagged real cats and dogs that ImageNet's classes do not
            describe well (newborn kittens, a cat upside down, a dog behind a fence); on train/
            at 272 px no training photo is less similar than 0.488 to its nearest other one,
            while the 19 photos of ../shared/data/neither are at most 0.430, hence 0.45. Without
            a bank (--finetune full), the top-5 test alone.
  energy    (every other model) the score is logsumexp of the logits, high for inputs like
            the training data; the threshold sits just below the lowest score of any
            validation photo, so no validation photo is flagged (a conservative rule).
"""

from __future__ import annotations

import torch

IMAGENET_CATS_AND_DOGS = range(151, 294)  # dog breeds 151-268, wolves and foxes, cats 281-293
IMAGENET_TOP = 5
IMAGENET_THRESHOLD = 0.0  # on imagenet_score: a cat or dog class among the IMAGENET_TOP best guesses
IMAGENET_SIMILAR = 0.45  # cosine similarity to the nearest training photo that makes a photo familiar
SIMILARITY_SCALE = 10.0  # known_score = max(imagenet_score, SIMILARITY_SCALE * (similarity - similar))


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


def nearest_similarity(embedding: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each embedding [N, C] to its nearest row of bank [M, C]."""
    query = torch.nn.functional.normalize(embedding.float(), dim=1)
    return (query @ torch.nn.functional.normalize(bank.to(query.device).float(), dim=1).T).amax(1)


def neither_rule(model, classes: list[str], val_logits: torch.Tensor, bank: torch.Tensor | None = None) -> dict:
    """How predict flags photos that are neither class: {"method", "threshold"[, "similar"]}."""
    if hasattr(model, "forward_all") and is_cats_and_dogs(classes):
        rule = {"method": "imagenet", "threshold": IMAGENET_THRESHOLD}
        return {**rule, "similar": IMAGENET_SIMILAR} if bank is not None else rule
    scores = energy_score(val_logits)
    margin = 0.01 * (scores.max() - scores.min()).item() if len(scores) > 1 else 0.0
    return {"method": "energy", "threshold": scores.min().item() - margin if len(scores) else float("-inf")}


def uses_imagenet(rule: dict | None) -> bool:
    """Whether the rule needs the ImageNet head's logits (Backbone.forward_all)."""
    return bool(rule) and rule["method"] == "imagenet"


def known_scores(rule: dict, logits: torch.Tensor, imagenet_logits: torch.Tensor | None,
                 similarity: torch.Tensor | None = None) -> torch.Tensor:
    """How much each photo looks like the trained classes, on the rule's scale (below the
    threshold: neither). imagenet with "similar": the larger of the top-5 score and
    SIMILARITY_SCALE x (similarity to the nearest training photo - similar), so a photo is
    neither only when both say it is."""
    if not uses_imagenet(rule):
        return energy_score(logits)
    score = imagenet_score(imagenet_logits)
    if "similar" in rule and similarity is not None:
        score = torch.maximum(score, SIMILARITY_SCALE * (similarity.float() - rule["similar"]))
    return score
