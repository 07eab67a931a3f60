"""Honest probabilities and the "neither" answer.

Calibration: a network trained with cross-entropy tends to be overconfident; dividing its
logits by one temperature T > 1, fitted on the validation split, makes "90%" right about 90%
of the time without changing any prediction. The expected calibration error (ECE) measures
the gap: the average |accuracy - confidence| over bins of confidence, weighted by bin size.

Neither: a photo of a car should not come back "dog 71%". `neither_rule` picks how a model
says "this is neither of my classes":
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


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """ECE of the top-class confidence, over `bins` equal-width bins of confidence."""
    confidence, predicted = probabilities.max(1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.float().mean().item() * abs(correct[inside].mean().item()
                                                         - confidence[inside].mean().item())
    return error


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T minimising the cross-entropy of softmax(logits / T) on these labels."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=100, line_search_fn="strong_wolfe")
    logits, labels = logits.detach().float().clone(), labels.detach().clone()  # may be inference tensors

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def calibrate(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Fit a temperature; report ECE before and after (on the same split: in-sample)."""
    temperature = fit_temperature(logits, labels)
    return {"temperature": temperature,
            "ece_before": expected_calibration_error(logits.softmax(1), labels),
            "ece_after": expected_calibration_error((logits / temperature).softmax(1), labels)}


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


def neither_rule(model, classes: list[str], val_logits: torch.Tensor) -> dict:
    """How predict flags photos that are neither class: {"method", "threshold"}."""
    if hasattr(model, "forward_all") and sorted(c.lower() for c in classes) == ["cat", "dog"]:
        return {"method": "imagenet", "threshold": IMAGENET_THRESHOLD}
    scores = energy_score(val_logits)
    margin = 0.01 * (scores.max() - scores.min()).item() if len(scores) > 1 else 0.0
    return {"method": "energy", "threshold": scores.min().item() - margin if len(scores) else float("-inf")}
