"""Label-free estimates for one window, and the realised figures beside them where labels are known.

Prevalence: the EM of Saerens, Latinne & Decaestecker (2002) on the calibrated probabilities, with a bootstrap
interval. Accuracy, sensitivity and specificity at the served threshold: CBPE (confidence-based performance
estimation): each image adds its calibrated probability of pneumonia to the expected confusion-matrix cell of the
class it was answered. CBPE assumes the calibrated probabilities still hold on the window (the images change,
not what they mean). A strong domain shift, adult films for a model of children's films, breaks that: the
estimates are then optimistic, which is why the realised figures are shown next to them when labels exist.
"""

import dataclasses
from typing import Optional, Tuple

import numpy as np

from components.threshold_calibrator.prevalence import bootstrap_prevalence, em_prevalence


@dataclasses.dataclass(frozen=True)
class Performance:
    """At the served threshold; None where the window holds no image of the class the figure divides by."""

    accuracy: Optional[float]
    sensitivity: Optional[float]
    specificity: Optional[float]
    images: int


def _ratio(numerator: float, denominator: float) -> Optional[float]:
    return float(numerator / denominator) if denominator > 1e-9 else None


def _performance(pneumonia: np.ndarray, positive: np.ndarray) -> Performance:
    """From each image's (expected or known) pneumonia indicator and the class it was answered."""
    true_positive, false_negative = np.sum(pneumonia * positive), np.sum(pneumonia * ~positive)
    false_positive, true_negative = np.sum((1 - pneumonia) * positive), np.sum((1 - pneumonia) * ~positive)
    return Performance(
        _ratio(true_positive + true_negative, pneumonia.size),
        _ratio(true_positive, true_positive + false_negative),
        _ratio(true_negative, true_negative + false_positive),
        int(pneumonia.size),
    )


def expected_performance(calibrated: np.ndarray, positive: np.ndarray) -> Performance:
    """CBPE: the confusion matrix expected from calibrated probabilities."""
    return _performance(np.asarray(calibrated, dtype=float), np.asarray(positive, dtype=bool))


def realised_performance(labels: np.ndarray, positive: np.ndarray) -> Performance:
    return _performance(np.asarray(labels, dtype=float), np.asarray(positive, dtype=bool))


def prevalence(calibrated: np.ndarray, prior: float, seed: int = 0) -> Tuple[float, float, float]:
    """(estimate, lower, upper): EM prevalence and its 95% bootstrap interval."""
    estimate, _ = em_prevalence(calibrated, prior)
    lower, upper = bootstrap_prevalence(np.asarray(calibrated, dtype=float), prior, seed=seed)
    return estimate, lower, upper
