"""The operating threshold, chosen on the validation split only."""
import dataclasses
from typing import Optional, Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Threshold:
    value: float
    policy: str
    sensitivity: float  # on validation, at `value`
    specificity: float
    examples: int


def roc_points(labels: np.ndarray, probabilities: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, sensitivity, specificity) for 'positive when probability >= threshold', descending."""
    labels = np.asarray(labels).astype(bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    thresholds = np.unique(probabilities)[::-1]
    positives, negatives = labels.sum(), (~labels).sum()
    order = np.argsort(-probabilities, kind="stable")
    sorted_probs, sorted_labels = probabilities[order], labels[order]
    # Number of examples with probability >= each threshold.
    predicted_positive = np.searchsorted(-sorted_probs, -thresholds, side="right")
    true_positive = np.concatenate([[0], np.cumsum(sorted_labels)])[predicted_positive]
    false_positive = predicted_positive - true_positive
    return thresholds, true_positive / positives, 1.0 - false_positive / negatives


def target_sensitivity(policy: str) -> Optional[float]:
    """None for `youden`, X for `sensitivity:X`; anything else is refused (checked before training too)."""
    if policy == "youden":
        return None
    if policy.startswith("sensitivity:"):
        try:
            target = float(policy.split(":", 1)[1])
        except ValueError:
            target = float("nan")
        if not 0.0 < target <= 1.0:
            raise ValueError(f"threshold policy {policy!r}: target sensitivity must be a number in (0, 1]")
        return target
    raise ValueError(f"unknown threshold policy {policy!r}; use 'youden' or 'sensitivity:0.95'")


def choose(labels: np.ndarray, probabilities: np.ndarray, policy: str = "youden") -> Threshold:
    """`youden` maximises sensitivity + specificity - 1 (ties: the more sensitive); `sensitivity:X` is
    the highest threshold reaching sensitivity X. Validation with a single class cannot rank: 0.5 is kept and said so."""
    labels = np.asarray(labels)
    if labels.min(initial=1) == labels.max(initial=0):
        return Threshold(0.5, f"{policy} (fallback 0.5: validation has one class)", float("nan"), float("nan"),
                         int(labels.size))
    thresholds, sensitivity, specificity = roc_points(labels, probabilities)
    target = target_sensitivity(policy)
    if target is None:
        youden = sensitivity + specificity - 1.0
        # Ties go to the lowest threshold, the most sensitive: missing pneumonia costs more.
        best = int(np.flatnonzero(youden >= youden.max() - 1e-9)[-1])
    else:
        best = int(np.argmax(sensitivity >= target))  # thresholds descend: first hit is the highest
    return Threshold(float(thresholds[best]), policy, float(sensitivity[best]), float(specificity[best]),
                     int(labels.size))
