"""The served version's reference: its answers and image statistics on the validation split, and how well its
probabilities are calibrated there.

Computed from the prepared validation split (`--reference DATA`, as `pneumonia calibrate --unlabeled` does)
through the SavedModel's `predict_images`, the signature the server runs, and saved as JSON (`--save-reference`)
so a scheduled monitor does not score validation on every run.

Calibration: ECE (10 equal-width bins) and the reliability curve on validation. A model trained with balanced
class weights answers as if half the images had pneumonia, so on a split of another prevalence it is off by
construction. Above the tolerance, Platt scaling fitted on validation maps the logged probabilities before any
label-free estimate, and the ECE it reaches is measured by 5-fold cross-fitting. The proper place for that map
is inside the exported model (trainer/signatures.py); it is applied here so the served signatures stay as they are.
"""

import dataclasses
import json
import os
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
import tensorflow as tf
from scipy import optimize, special

from components.report.plots import Scores, calibration_bins, expected_calibration_error
from components.threshold_calibrator.executor import predict_outputs
from components.threshold_calibrator.prevalence import TRAINING_PRIOR
from pipeline.config import BLESSING_SPLIT
from pneumonia.data.records import read_split
from pneumonia.monitoring.logs import MonitorError
from pneumonia.monitoring.settings import ECE_TOLERANCE
from serving import image_stats
from serving.repository import servable_versions
from trainer import signatures

FOLDS = 5


@dataclasses.dataclass
class Reference:
    """One served version's answers on validation: what each logged window is compared with."""

    model: str
    version: int
    threshold: float
    policy: str
    source: str  # the prepared data it was computed from
    probability: np.ndarray
    labels: Optional[np.ndarray]  # None when the validation records carry no labels
    statistics: pd.DataFrame  # image_stats.FEATURES per validation image (ood_score: the model's)

    def to_json(self) -> str:
        return json.dumps(
            {
                **{key: getattr(self, key) for key in ("model", "version", "threshold", "policy", "source")},
                "probability": self.probability.tolist(),
                "labels": None if self.labels is None else self.labels.tolist(),
                "statistics": {name: self.statistics[name].tolist() for name in image_stats.FEATURES},
            }
        )

    @classmethod
    def from_json(cls, text: str) -> "Reference":
        data = json.loads(text)
        return cls(
            **{key: data[key] for key in ("model", "version", "threshold", "policy", "source")},
            probability=np.array(data["probability"], dtype=float),
            labels=None if data["labels"] is None else np.array(data["labels"], dtype=int),
            statistics=pd.DataFrame(data["statistics"], dtype=float),
        )


def compute(serving_dir: str, model: str, version: int, data: str) -> Reference:
    """Scores the prepared validation split under `data` with `model` version `version` under `serving_dir`."""
    base = os.path.join(serving_dir, model)
    if version not in servable_versions(base):
        raise MonitorError(f"the logs were answered by {model} version {version}, which is not under {base}")
    saved_model_dir = os.path.join(base, str(version))
    images, labels = read_split(data, BLESSING_SPLIT)
    if not images:
        raise MonitorError(
            f"no prepared {BLESSING_SPLIT} split under {data}: pass the folder `pneumonia prepare` wrote"
        )
    metadata = signatures.read_metadata(saved_model_dir)
    outputs = predict_outputs(saved_model_dir, images)
    statistics = pd.DataFrame([image_stats.image_statistics(image) for image in images])
    statistics[image_stats.OOD_FEATURE] = outputs.get("ood_score", np.full(len(images), np.nan))
    return Reference(
        model,
        version,
        float(metadata["value"]),
        str(metadata.get("policy", "")),
        data,
        outputs["probability"].astype(float),
        labels,
        statistics[list(image_stats.FEATURES)].astype(float),
    )


def load(path: str) -> Reference:
    try:
        with tf.io.gfile.GFile(path) as f:
            return Reference.from_json(f.read())
    except (tf.errors.OpError, ValueError, KeyError, TypeError) as error:
        raise MonitorError(f"{path} is not a reference written by --save-reference: {error}")


@dataclasses.dataclass(frozen=True)
class Calibration:
    """How the version's probabilities fit validation's labels, and the map applied before the estimates."""

    ece: Optional[float]  # as served; None without labels
    curve: List[Tuple[float, float, int]]  # (mean predicted, observed rate, images) per bin
    platt: Optional[Tuple[float, float]]  # (slope, intercept) on the logit, applied when ece > tolerance
    ece_after: Optional[float]  # with the map, cross-fitted
    prior: float  # the pneumonia prevalence the (mapped) probabilities assume

    def apply(self, probability: np.ndarray) -> np.ndarray:
        if self.platt is None:
            return np.asarray(probability, dtype=float)
        return _platt(self.platt, probability)


def _logit(probability: np.ndarray) -> np.ndarray:
    return special.logit(np.clip(np.asarray(probability, dtype=float), 1e-6, 1 - 1e-6))


def _platt(parameters: Tuple[float, float], probability: np.ndarray) -> np.ndarray:
    slope, intercept = parameters
    return special.expit(slope * _logit(probability) + intercept)


def fit_platt(probability: np.ndarray, labels: np.ndarray) -> Tuple[float, float]:
    """Slope and intercept on the logit that minimise validation's log loss (Platt 1999)."""

    def loss(parameters):
        mapped = np.clip(_platt(parameters, probability), 1e-12, 1 - 1e-12)
        return -np.mean(labels * np.log(mapped) + (1 - labels) * np.log(1 - mapped))

    return tuple(float(v) for v in optimize.minimize(loss, np.array([1.0, 0.0]), method="Nelder-Mead").x)


def calibration(reference: Reference, tolerance: float = ECE_TOLERANCE, model_prior: float = TRAINING_PRIOR):
    """ECE and curve on validation; Platt scaling when the ECE is over `tolerance`. Without labels nothing can
    be checked: the probabilities are taken as they are, under `model_prior`."""
    labels = reference.labels
    if labels is None:
        return Calibration(None, [], None, None, model_prior)
    scores = Scores(labels, reference.probability)
    curve = [(float(p), float(o), int(n)) for p, o, n in zip(*calibration_bins(scores))]
    ece, prevalence = expected_calibration_error(scores), float(labels.mean())
    if ece <= tolerance:
        return Calibration(ece, curve, None, None, prevalence)
    folds = np.random.default_rng(0).permutation(labels.size) % FOLDS
    crossed = np.empty(labels.size)
    for fold in range(FOLDS):
        held = folds == fold
        crossed[held] = _platt(fit_platt(reference.probability[~held], labels[~held]), reference.probability[held])
    after = expected_calibration_error(Scores(labels, crossed))
    return Calibration(ece, curve, fit_platt(reference.probability, labels), after, prevalence)
