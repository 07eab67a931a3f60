"""The linear probe solved exactly, its L2 strength chosen by cross-validation on the training photos.

A pretrained backbone's probe is a multinomial logistic regression on the frozen network's pooled
features. Epochs of gradient descent with one fixed weight decay overfit classes ImageNet never saw
(benchmarks/RESULTS.md, "Your own classes"); the recipe's `--optimizer lbfgs` does what
scikit-learn's LogisticRegressionCV does instead:

  1. standardize the features (mean 0, standard deviation 1 on the photos being fitted);
  2. for each strength C of recipes.SOLVER's (scikit-learn's C: the loss summed over the photos
     plus |W|^2 / 2C, so 1 / (C N) on the mean loss) and each fold of the training photos
     (stratified, seeded; the views of a photo in one fold), fit on the other folds (full-batch
     L-BFGS; along the strengths each fit starts from the previous one) and score the held-out
     fold: out-of-fold log-loss and accuracy of each strength, summed over 3 deals of the folds
     (fewer chance ties and flukes than one deal);
  3. choose the strength with the highest out-of-fold accuracy (LogisticRegressionCV's choice), of
     equals the lowest out-of-fold log-loss; refit on all training photos with it, from zero;
  4. fold the standardization into the output layer (Probe.folded), so the model, its checkpoint,
     predict and the exported files are those of any probe.

val is never read. In a run the solve is the run's one epoch (fitting.solve_epoch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from classifier.data import stratified_folds
from classifier.recipes import SOLVER


@dataclass
class Probe:
    """A fitted probe: the standardization, and a linear layer on standardized features (float64)."""

    mean: torch.Tensor
    scale: torch.Tensor
    weight: torch.Tensor  # [classes, features]
    bias: torch.Tensor

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return standardized(features, self.mean, self.scale) @ self.weight.T + self.bias

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        """Class probabilities [N, classes]."""
        return self.logits(features).softmax(1).float()

    def folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, bias) of the same layer on raw features: W x + b with W = W' / scale and
        b = b' - W' mean / scale."""
        weight = self.weight / self.scale
        return weight.float(), (self.bias - weight @ self.mean).float()


def standardization(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale) of each feature, float64. A feature (nearly) constant on these photos is
    scaled like a typical one, so it cannot blow up on others."""
    features = features.double()
    mean, scale = features.mean(0), features.std(0, correction=0)
    return mean, scale.clamp_min(float(scale.mean()) * 0.01 + 1e-12)


def standardized(features: torch.Tensor, mean: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (features.double() - mean) / scale


def solve(inputs: torch.Tensor, labels: torch.Tensor, num_classes: int, l2: float,
          start: tuple[torch.Tensor, torch.Tensor] | None = None, class_weights: torch.Tensor | None = None,
          label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) minimizing the mean cross-entropy + l2 / 2 |weight|^2 on standardized
    float64 inputs: full-batch L-BFGS from zero (or from `start`), to convergence or
    SOLVER["iterations"]. The bias is not penalized."""
    weight = (start[0] if start else torch.zeros(num_classes, inputs.shape[1], dtype=torch.float64)).clone()
    bias = (start[1] if start else torch.zeros(num_classes, dtype=torch.float64)).clone()
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    weights = None if class_weights is None else class_weights.double()
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=SOLVER["iterations"],
                                  line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(inputs @ weight.T + bias, labels, weight=weights, label_smoothing=label_smoothing)
        loss = loss + l2 / 2 * weight.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def fit_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float = 1e-2,
              class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0) -> Probe:
    """A multinomial logistic regression on standardized features [N, C], from zero (so the same
    photos always give the same probe); weight_decay is the l2 of solve."""
    mean, scale = standardization(features)
    weight, bias = solve(standardized(features, mean, scale), labels, num_classes, weight_decay,
                         class_weights=class_weights, label_smoothing=label_smoothing)
    return Probe(mean, scale, weight, bias)


def l2_of(strength: float, examples: int) -> float:
    """scikit-learn's C on the summed loss -> solve's l2 on the mean loss of `examples` examples."""
    return 1.0 / (strength * max(examples, 1))


def tally(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int, int]:
    """(summed cross-entropy, correct, examples)."""
    return F.cross_entropy(logits, labels, reduction="sum").item(), int((logits.argmax(1) == labels).sum()), len(labels)


def folds_of(labels: torch.Tensor, views: int, seed: int, deals: int) -> list[torch.Tensor]:
    """Held-out masks of every fold of `deals` deals: photos (every `views` consecutive examples)
    dealt by class into at most SOLVER["folds"] folds, no more than there are photos; folds left
    without photos to fit on or to score are left out."""
    photos = labels[::views]
    folds = min(SOLVER["folds"], max(len(photos), 2))
    deals_of = [stratified_folds(photos, folds, seed * deals + d).repeat_interleave(views) for d in range(deals)]
    held = [fold_of == fold for fold_of in deals_of for fold in range(folds)]
    return [mask for mask in held if mask.any() and not mask.all()]


def solve_steps(examples: int) -> int:
    """Fits of a solve on `examples` examples (each strength on each fold of each deal, then the
    refit), at most: the steps of the solver's epoch (plan.py)."""
    return len(SOLVER["strengths"]) * min(SOLVER["folds"], max(examples, 2)) * SOLVER["deals"] + 1


def cross_validate(features: torch.Tensor, labels: torch.Tensor, num_classes: int, views: int = 1, seed: int = 0,
                   class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0,
                   on_fit: Callable[[float, int, int], bool] | None = None,
                   deals: int = SOLVER["deals"]) -> list[dict] | None:
    """Step 2: each strength's out-of-fold {"strength", "loss", "accuracy", "scored"}, summed over
    every fold of every deal. on_fit(loss sum, correct, examples) gets each fit's results on its
    own training examples and returns False to stop: then None."""
    strengths = SOLVER["strengths"]
    totals = [[0.0, 0, 0] for _ in strengths]  # held-out loss sum, correct, examples
    for held in folds_of(labels, views, seed, deals):
        mean, scale = standardization(features[~held])
        train, test = standardized(features[~held], mean, scale), standardized(features[held], mean, scale)
        start = None
        for total, strength in zip(totals, strengths):
            start = solve(train, labels[~held], num_classes, l2_of(strength, len(train)), start, class_weights,
                          label_smoothing)
            total[:] = [a + b for a, b in zip(total, tally(test @ start[0].T + start[1], labels[held]))]
            if on_fit and not on_fit(*tally(train @ start[0].T + start[1], labels[~held])):
                return None
    return [{"strength": s, "loss": loss / max(n, 1), "accuracy": right / max(n, 1), "scored": n}
            for s, (loss, right, n) in zip(strengths, totals)]


def best_strength(scores: list[dict]) -> dict:
    """Step 3: the strength with the highest out-of-fold accuracy (LogisticRegressionCV's choice),
    of equals the one with the lowest out-of-fold log-loss, then the strongest; with nothing
    scored (a photo a class), scikit-learn's default C = 1."""
    scored = [s for s in scores if s["scored"]]
    if not scored:
        return {"strength": 1.0, "loss": math.nan, "accuracy": math.nan, "scored": 0}
    return min(scored, key=lambda s: (-s["accuracy"], s["loss"]))


def cross_validated_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, views: int = 1,
                          seed: int = 0, class_weights: torch.Tensor | None = None, label_smoothing: float = 0.0,
                          on_fit: Callable[[float, int, int], bool] | None = None) -> tuple[Probe, dict] | None:
    """Steps 1-3 on a training set's pooled features [N, C] (`views` consecutive rows per photo):
    the probe refit on all of them at the chosen strength, and that strength's out-of-fold scores;
    None if on_fit asked to stop."""
    scores = cross_validate(features, labels, num_classes, views, seed, class_weights, label_smoothing, on_fit)
    if scores is None:
        return None
    chosen = best_strength(scores)
    probe = fit_probe(features, labels, num_classes, l2_of(chosen["strength"], len(labels)), class_weights,
                      label_smoothing)
    return probe, chosen
