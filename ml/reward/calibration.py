"""Calibration of the reward model's P(MET): temperature scaling, ECE and the reliability curve.

PPO optimises the reward's level, not only its ranking, so P(MET) should mean what it says: of
conditions scored 0.8, about 80% were met. Fine-tuned BERTs are over-confident; one temperature T
fitted on validation logits (Guo et al., 2017: minimise the NLL of softmax(logits / T)) fixes most
of it without changing any prediction. Calibration here is that of P(MET) itself: predictions are
binned by P(MET) and each bin's mean P(MET) is compared with the share of MET in it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

# Bounds on T. A validation set the model separates perfectly drives the NLL-optimal T towards 0,
# which would saturate P(MET) at 0 or 1 and leave PPO no signal between similar answers.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.25, 10.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on (N, C) logits; 1.0 without data.
    Optimised over log T, so T stays positive and the problem is smooth for LBFGS."""
    if len(labels) == 0:
        return 1.0
    logits_t = torch.tensor(np.asarray(logits), dtype=torch.float64)
    labels_t = torch.tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits_t / log_t.exp(), labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(log_t.exp().item(), MIN_TEMPERATURE, MAX_TEMPERATURE))


def positive_probability(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """P(class 1) = softmax(logits / T)[:, 1] for (N, 2) logits."""
    scaled = torch.tensor(np.asarray(logits), dtype=torch.float64) / temperature
    return torch.softmax(scaled, dim=-1)[:, 1].numpy()


def reliability_curve(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """One row per equal-width bin of P(MET): its bounds, count, mean P(MET) and observed MET share
    (NaN for empty bins)."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # P = 1.0 belongs to the last bin, not to a bin of its own.
    index = np.minimum((probs * n_bins).astype(int), n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_predicted = np.bincount(index, weights=probs, minlength=n_bins) / count
        observed_rate = np.bincount(index, weights=labels, minlength=n_bins) / count
    return pd.DataFrame({"bin_lower": edges[:-1], "bin_upper": edges[1:], "count": count,
                         "mean_predicted": mean_predicted, "observed_rate": observed_rate})


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum over bins of (bin share) * |observed MET share - mean P(MET)|; NaN without data."""
    curve = reliability_curve(probs, labels, n_bins)
    filled = curve[curve["count"] > 0]
    if filled.empty:
        return float("nan")
    gap = (filled["observed_rate"] - filled["mean_predicted"]).abs()
    return float((gap * filled["count"]).sum() / filled["count"].sum())
