"""Choosing the operating threshold on a site's labelled sample, and how sure that choice is.

Shared by the ThresholdCalibrator component (a calibration split in the pipeline) and `pneumonia calibrate`
(a deployed model and a folder of site images).
"""

import dataclasses
from typing import Dict, Tuple

import numpy as np
from scipy import stats

from trainer import threshold as threshold_lib

MIN_PER_CLASS = 10  # fewer images of a class cannot place a threshold that means anything
BOOTSTRAP_SAMPLES = 200


class CalibrationError(ValueError):
    """The calibration sample cannot set a threshold; the message is one line."""


def check_sample(labels: np.ndarray, where: str) -> Tuple[int, int]:
    """(NORMAL, PNEUMONIA) counts of a usable sample; raises when a class is missing or under MIN_PER_CLASS."""
    labels = np.asarray(labels)
    normal, pneumonia = int((labels == 0).sum()), int((labels == 1).sum())
    if not normal or not pneumonia:
        present = "NORMAL" if normal else "PNEUMONIA" if pneumonia else "no"
        raise CalibrationError(
            f"{where} has {present} images only: a threshold needs both NORMAL and PNEUMONIA "
            f"images (at least {MIN_PER_CLASS} of each)"
        )
    if min(normal, pneumonia) < MIN_PER_CLASS:
        raise CalibrationError(
            f"{where} has {normal} NORMAL and {pneumonia} PNEUMONIA images: at least "
            f"{MIN_PER_CLASS} of each are needed to choose a threshold"
        )
    return normal, pneumonia


def policy_of(model_policy: str) -> str:
    """The policy a model's threshold JSON records, without the note a fallback adds ("youden (fallback ...)")."""
    return model_policy.split(" ")[0]


def bootstrap_interval(
    labels: np.ndarray, probabilities: np.ndarray, policy: str, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> Tuple[float, float]:
    """The 95% percentile interval of the threshold `policy` chooses, over resamples of the sample drawn with
    replacement within each class (so every resample keeps the sample's class counts)."""
    rng = np.random.default_rng(seed)
    labels, probabilities = np.asarray(labels), np.asarray(probabilities, dtype=np.float64)
    classes = [np.flatnonzero(labels == value) for value in (0, 1)]
    chosen = []
    for _ in range(samples):
        picked = np.concatenate([rng.choice(members, members.size) for members in classes])
        chosen.append(threshold_lib.choose(labels[picked], probabilities[picked], policy).value)
    lower, upper = np.percentile(chosen, [2.5, 97.5])
    return float(lower), float(upper)


def wilson_interval(successes: int, total: int, confidence: float = 0.95) -> Tuple[float, float]:
    """Wilson's score interval of a proportion: sensible near 0 and 1 and for small counts."""
    if total == 0:
        return float("nan"), float("nan")
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * np.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


@dataclasses.dataclass(frozen=True)
class Rates:
    """Sensitivity and specificity at one threshold, with their counts and 95% Wilson intervals."""

    threshold: float
    sensitivity: float
    specificity: float
    sensitivity_interval: Tuple[float, float]
    specificity_interval: Tuple[float, float]
    pneumonia: int
    normal: int

    @classmethod
    def at(cls, labels: np.ndarray, probabilities: np.ndarray, value: float) -> "Rates":
        labels = np.asarray(labels)
        predicted = np.asarray(probabilities) >= value
        found, pneumonia = int(predicted[labels == 1].sum()), int((labels == 1).sum())
        cleared, normal = int((~predicted[labels == 0]).sum()), int((labels == 0).sum())
        return cls(
            float(value),
            found / pneumonia if pneumonia else float("nan"),
            cleared / normal if normal else float("nan"),
            wilson_interval(found, pneumonia),
            wilson_interval(cleared, normal),
            pneumonia,
            normal,
        )

    def describe(self) -> str:
        def one(name, value, interval, count):
            return f"{name} {value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}] of {count}"

        return (
            f"threshold {self.threshold:.4f}: "
            + one("sensitivity", self.sensitivity, self.sensitivity_interval, self.pneumonia)
            + ", "
            + one("specificity", self.specificity, self.specificity_interval, self.normal)
        )


def calibrate(
    labels: np.ndarray,
    probabilities: np.ndarray,
    policy: str,
    old_threshold: float,
    where: str,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> Tuple[threshold_lib.Threshold, Dict]:
    """The threshold `policy` chooses on the sample, and the record of the change: old and new thresholds,
    counts, the new threshold's bootstrap interval, and the sample's rates before and after."""
    normal, pneumonia = check_sample(labels, where)
    chosen = threshold_lib.choose(labels, probabilities, policy)
    chosen = dataclasses.replace(chosen, policy=f"{policy} on {where}")
    lower, upper = bootstrap_interval(labels, probabilities, policy, samples, seed)
    before, after = Rates.at(labels, probabilities, old_threshold), Rates.at(labels, probabilities, chosen.value)
    record = {
        "calibrated": True,
        "where": where,
        "policy": policy,
        "old_threshold": float(old_threshold),
        "new_threshold": chosen.value,
        "threshold_interval": [lower, upper],
        "bootstrap_samples": samples,
        "normal": normal,
        "pneumonia": pneumonia,
        "before": dataclasses.asdict(before),
        "after": dataclasses.asdict(after),
    }
    return chosen, record
