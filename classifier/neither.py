"""The "neither" answer: a photo of a car should not come back "dog 71%".

One object, NeitherRule, says when a photo shows none of the trained classes: training fits it
(NeitherRule.fit), the checkpoint and an exported model's metadata store it (to_dict, and the
training photos' features as "neither_bank"), and predict, serve, export and audit apply it
(similarity per view, then known_scores and is_neither). A photo whose known score is below the
rule's threshold is neither.

  imagenet  (pretrained backbones trained on cats and dogs) the photo is neither when the model's
            original ImageNet classifier has none of its cat or dog classes among its `top` most
            likely guesses AND the photo looks unlike the training photos: the mean cosine
            similarity of the original network's pooled features to its `neighbours` most similar
            training photos (the bank the checkpoint keeps) is below `similar`. Both tests must
            say "neither", because each alone fails somewhere: ImageNet's classes describe some
            real cats and dogs badly (newborn kittens, a dog behind a fence), and people and other
            animals can look like a training photo of a person holding a pet. The values
            (IMAGENET_TOP, NEIGHBOURS, IMAGENET_SIMILAR) were chosen by benchmarks/neither.py on
            the "tune" part of benchmarks/neither_set.py's images and train/ alone: the most
            non-cat/dog images caught with no training photo flagged (each scored against the
            other folds' photos). Without a bank (--finetune full), the top-K test alone.
  energy    (every other model) the score is logsumexp of the logits, high for inputs like
            the training data; the threshold sits just below the lowest score of any
            validation photo, so no validation photo is flagged (a conservative rule).

Checkpoints written before the rule was one object hold {"method", "threshold"[, "similar"]} and
"neither_bank": from_dict reads them as they were meant (top 5, the nearest training photo).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

IMAGENET_CATS_AND_DOGS = range(151, 294)  # dog breeds 151-268, wolves and foxes, cats 281-293
# The rule's constants, chosen on train/ and the tune part of 4,604 images of neither class
# (benchmarks/neither.py: no training photo flagged, at least 97% of the tune part caught, then
# the widest margin above the least similar training photo):
IMAGENET_TOP = 5  # a cat or dog class among the ImageNet head's 5 likeliest guesses: known
IMAGENET_THRESHOLD = 0.0  # on the known score: below it, neither
IMAGENET_SIMILAR = 0.43  # mean cosine similarity to the NEIGHBOURS most similar training photos: known
NEIGHBOURS = 3
EARLIER_TOP, EARLIER_NEIGHBOURS = 5, 1  # what a rule saved without "top" and "neighbours" used
SIMILARITY_SCALE = 10.0  # known_score = max(imagenet_score, SIMILARITY_SCALE * (similarity - similar))
BANK_DTYPE = torch.float16  # the training photos' features in the checkpoint: half the bytes


def energy_score(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp of the logits (minus the energy): higher for inputs like the training data."""
    return logits.float().logsumexp(1)


def imagenet_score(imagenet_logits: torch.Tensor, top: int = IMAGENET_TOP) -> torch.Tensor:
    """The original ImageNet classifier's logit of its most likely cat or dog class minus its
    top-th largest logit: the log of how many times likelier that class is than the top-th
    guess; >= 0 exactly when a cat or dog class is among the `top` best guesses."""
    logits = imagenet_logits.float()
    best_known = logits[:, IMAGENET_CATS_AND_DOGS].max(1).values
    return best_known - logits.topk(top, dim=1).values[:, -1]


def is_cats_and_dogs(classes: list[str]) -> bool:
    """The classes the project's ImageNet neither rule is made for."""
    return sorted(c.lower() for c in classes) == ["cat", "dog"]


def neighbour_similarity(embedding: torch.Tensor, bank: torch.Tensor, neighbours: int = 1) -> torch.Tensor:
    """Mean cosine similarity of each embedding [N, C] to its `neighbours` most similar rows of bank [M, C]."""
    query = nn.functional.normalize(embedding.float(), dim=1)
    cosine = query @ nn.functional.normalize(bank.to(query.device).float(), dim=1).T
    return cosine.topk(min(neighbours, cosine.shape[1]), dim=1).values.mean(1)


@torch.inference_mode()
def training_bank(model: nn.Module, frozen: torch.Tensor, device: torch.device, batch: int = 256) -> torch.Tensor | None:
    """The original network's pooled features of the training photos, from their frozen features
    [N, ...] (what the rule compares a new photo with). None for models without an ImageNet head."""
    if not hasattr(model, "imagenet_embedding"):
        return None
    training = model.training
    model.eval()  # no batch-norm statistic of the ImageNet branch moves
    try:
        return torch.cat([model.imagenet_embedding(frozen[i:i + batch].float().to(device)).cpu()
                          for i in range(0, len(frozen), batch)]).to(BANK_DTYPE)
    finally:
        model.train(training)


@dataclass
class NeitherRule:
    """How predict says a photo shows none of the trained classes (see the module's docstring)."""

    method: str  # "imagenet" or "energy"
    threshold: float  # a known score below it: neither
    similar: float | None = None  # imagenet with a bank: the similarity that makes a photo known
    top: int = IMAGENET_TOP  # imagenet: how many of the head's likeliest guesses are looked at
    neighbours: int = 1  # imagenet with a bank: how many of the most similar training photos
    bank: torch.Tensor | None = field(default=None, repr=False)  # [M, C] training photos' features

    @classmethod
    def fit(cls, model: nn.Module, classes: list[str], val_logits: torch.Tensor,
            bank: torch.Tensor | None = None) -> "NeitherRule":
        """The rule for a trained model: imagenet for a pretrained backbone trained on cats and
        dogs (with the training photos' features, when there are), else energy from val."""
        if hasattr(model, "forward_all") and is_cats_and_dogs(classes):
            return cls.for_cats_and_dogs(bank)
        scores = energy_score(val_logits)
        margin = 0.01 * (scores.max() - scores.min()).item() if len(scores) > 1 else 0.0
        return cls("energy", scores.min().item() - margin if len(scores) else float("-inf"))

    @classmethod
    def for_cats_and_dogs(cls, bank: torch.Tensor | None = None) -> "NeitherRule":
        """The imagenet rule with the project's chosen values; the similarity test needs a bank."""
        if bank is None:
            return cls("imagenet", IMAGENET_THRESHOLD)
        return cls("imagenet", IMAGENET_THRESHOLD, IMAGENET_SIMILAR, IMAGENET_TOP, NEIGHBOURS, bank)

    def to_dict(self) -> dict:
        """Plain data (what checkpoint["neither"] and an export's "neither" metadata hold); the
        bank travels separately (checkpoint["neither_bank"], or inside the exported graph)."""
        used = ["method", "threshold"] + (["top"] if self.uses_imagenet else []) \
            + (["similar", "neighbours"] if self.similar is not None else [])
        return {k: v for k, v in asdict(self).items() if k in used}

    @classmethod
    def from_dict(cls, rule: dict | None, bank: torch.Tensor | None = None) -> "NeitherRule | None":
        """The rule of a checkpoint or an export (None: none); older dicts lack top and neighbours."""
        if not rule:
            return None
        return cls(rule["method"], float(rule["threshold"]), rule.get("similar"), int(rule.get("top", EARLIER_TOP)),
                   int(rule.get("neighbours", EARLIER_NEIGHBOURS)), bank if rule.get("similar") is not None else None)

    def to_checkpoint(self) -> dict:
        """The checkpoint's fields: "neither" and, with a similarity test, "neither_bank"."""
        return {"neither": self.to_dict(), **({"neither_bank": self.bank} if self.bank is not None else {})}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict) -> "NeitherRule | None":
        return cls.from_dict(checkpoint.get("neither"), checkpoint.get("neither_bank"))

    @property
    def uses_imagenet(self) -> bool:
        """Whether the rule needs the ImageNet head's logits (Backbone.forward_all)."""
        return self.method == "imagenet"

    def similarity(self, embedding: torch.Tensor) -> torch.Tensor | None:
        """One view's pooled features [N, C] -> its similarity to the training photos [N] (None
        without a bank). Plain tensor operations: the exported graph computes it too."""
        return None if self.bank is None else neighbour_similarity(embedding, self.bank, self.neighbours)

    def known_scores(self, logits: torch.Tensor | None, imagenet_logits: torch.Tensor | None,
                     similarity: torch.Tensor | None = None) -> torch.Tensor:
        """How much each photo looks like the trained classes (outputs averaged over the views),
        on the rule's scale. imagenet with "similar": the larger of the top-K score and
        SIMILARITY_SCALE x (similarity - similar), so a photo is neither only when both say it is."""
        if not self.uses_imagenet:
            return energy_score(logits)
        score = imagenet_score(imagenet_logits, self.top)
        if self.similar is not None and similarity is not None:
            score = torch.maximum(score, SIMILARITY_SCALE * (similarity.float().to(score.device) - self.similar))
        return score

    def is_neither(self, scores: torch.Tensor) -> torch.Tensor:
        return scores < self.threshold
