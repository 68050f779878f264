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


POLICIES = "'youden', 'sensitivity:0.95', 'cost:5', 'fixed:0.5' or 'median-midpoint'"


def parse(policy: str) -> Tuple[str, Optional[float]]:
    """(kind, number) of a policy: `youden`, `sensitivity:X` (X in (0, 1]), `cost:R` (R > 0: a missed pneumonia
    costs R false alarms), `fixed:X` (X in (0, 1)) or `median-midpoint`; anything else is refused (checked
    before training too)."""
    kind, sep, number = policy.partition(":")
    if kind in ("youden", "median-midpoint") and not sep:
        return kind, None
    if kind in ("sensitivity", "fixed", "cost") and sep:
        try:
            value = float(number)
        except ValueError:
            value = float("nan")
        if kind == "sensitivity" and not 0.0 < value <= 1.0:
            raise ValueError(f"threshold policy {policy!r}: target sensitivity must be a number in (0, 1]")
        if kind == "fixed" and not 0.0 < value < 1.0:
            raise ValueError(f"threshold policy {policy!r}: a fixed threshold must be a number in (0, 1)")
        if kind == "cost" and not 0.0 < value < float("inf"):
            raise ValueError(
                f"threshold policy {policy!r}: the cost ratio of a false negative to a false "
                f"positive must be a positive number"
            )
        return kind, value
    raise ValueError(f"unknown threshold policy {policy!r}; use {POLICIES}")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def choose(labels: np.ndarray, probabilities: np.ndarray, policy: str = "youden") -> Threshold:
    """The operating threshold on validation scores.

    `youden` maximises sensitivity + specificity - 1 (ties: the more sensitive). `sensitivity:X` is the
    highest threshold reaching sensitivity X: it is placed by the PNEUMONIA scores alone. `cost:R` minimises
    R x false negatives + false positives (ties: the more sensitive). `fixed:X` keeps X
    (with class-weighted training, 0.5 is the balanced-prior decision). `median-midpoint` is halfway, in
    logits, between the two classes' median scores: robust when validation separates perfectly and Youden's
    optimum is a whole interval. Validation with a single class cannot rank: 0.5 is kept and said so.
    """
    kind, number = parse(policy)
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.min(initial=1) == labels.max(initial=0):
        return Threshold(
            0.5, f"{policy} (fallback 0.5: validation has one class)", float("nan"), float("nan"), int(labels.size)
        )
    if kind in ("fixed", "median-midpoint"):
        if kind == "fixed":
            value = number
        else:
            middle = (np.median(_logit(probabilities[labels == 0])) + np.median(_logit(probabilities[labels == 1]))) / 2
            value = float(1.0 / (1.0 + np.exp(-middle)))
        predicted = probabilities >= value
        return Threshold(
            value,
            policy,
            float(predicted[labels == 1].mean()),
            float((~predicted[labels == 0]).mean()),
            int(labels.size),
        )
    thresholds, sensitivity, specificity = roc_points(labels, probabilities)
    if kind == "youden":
        youden = sensitivity + specificity - 1.0
        # Ties go to the lowest threshold, the most sensitive: missing pneumonia costs more.
        best = int(np.flatnonzero(youden >= youden.max() - 1e-9)[-1])
    elif kind == "cost":
        cost = number * (1.0 - sensitivity) * labels.sum() + (1.0 - specificity) * (labels.size - labels.sum())
        best = int(np.flatnonzero(cost <= cost.min() + 1e-9)[-1])
    else:
        best = int(np.argmax(sensitivity >= number))  # thresholds descend: first hit is the highest
    return Threshold(
        float(thresholds[best]), policy, float(sensitivity[best]), float(specificity[best]), int(labels.size)
    )
