"""Honest probabilities: a network trained with cross-entropy tends to be overconfident;
dividing its logits by one temperature T, fitted on the validation split, makes "90%" right
about 90% of the time without changing any prediction. The expected calibration error (ECE)
measures the gap: the average |accuracy - confidence| over bins of confidence, weighted by
bin size.
"""

from __future__ import annotations

import torch


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
