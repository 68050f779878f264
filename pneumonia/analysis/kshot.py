"""What a site's small labelled sample buys: calibrate each model's threshold on k labelled images of a split,
evaluate on the rest, over seeded draws, next to the model's own validation threshold.

Draws are whole patients, stratified by source and label (prepare's calibration carve, so the table measures
what `prepare --calibration-from` and the ThresholdCalibrator would do). The threshold is chosen by the
model's own policy; below the calibrator's minimum of 10 images per class (k = 20 on an unbalanced split)
the table still shows what the policy gives, which is the point of a small-k row.
"""

import json
import os
import re
from typing import Dict, List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from components.threshold_calibrator.calibration import policy_of
from components.threshold_calibrator.executor import RECORD
from components.threshold_calibrator.prevalence import TRAINING_PRIOR, em_prevalence, prior_adjusted_threshold
from pneumonia.analysis.policies import rates
from pneumonia.analysis.tables import format_number
from pneumonia.data.carve import choose_calibration_patients
from pneumonia.data.images import parse_patient_and_pathogen
from pneumonia.runs import scoring
from trainer import threshold

KS = (20, 50, 100)
DRAWS = 20
SPLITS = ("test", "external")
MEASURES = ("accuracy", "sensitivity", "specificity")


def patients_and_sources(split: str, labels: np.ndarray, paths: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Each image's patient (from Kermany file names; the file itself otherwise) and source (the file-name
    prefix in a pooled evaluation-only split such as external's rsna_ and ieee8023_, else the split)."""
    patients, sources = [], []
    for label, path in zip(labels, paths):
        name = os.path.basename(path)
        patient, _ = parse_patient_and_pathogen(name, int(label))
        patients.append(patient or path)
        prefix, sep, _ = name.partition("_")
        sources.append(
            prefix.lower()
            if split not in ("train", "eval", "test") and sep and re.fullmatch(r"[a-z0-9]+", prefix.lower())
            else split
        )
    return patients, sources


def draws(
    labels: np.ndarray,
    probabilities: np.ndarray,
    patients: List[str],
    sources: List[str],
    k: int,
    policy: str,
    validation_threshold: float,
    count: int = DRAWS,
) -> Dict[str, np.ndarray]:
    """Per draw: the calibrated threshold and, on the images not drawn, the rates at it (`<measure>`) and at
    the validation threshold (`<measure>@val`)."""
    found: Dict[str, list] = {}
    images = list(zip(patients, sources, (int(label) for label in labels)))
    for seed in range(count):
        chosen = set(choose_calibration_patients(images, k, seed))
        drawn = np.array([patient in chosen for patient in patients])
        value = threshold.choose(labels[drawn], probabilities[drawn], policy).value
        rest = (labels[~drawn], probabilities[~drawn])
        figures = {"threshold": value, "drawn": int(drawn.sum())}
        figures.update(rates(*rest, value))
        figures.update({f"{key}@val": number for key, number in rates(*rest, validation_threshold).items()})
        for key, number in figures.items():
            found.setdefault(key, []).append(number)
    return {key: np.array(values, dtype=np.float64) for key, values in found.items()}


def trained_threshold(model_uri: str, served: float) -> float:
    """The Trainer's validation threshold: the model's own, or the one before a ThresholdCalibrator moved it."""
    record = os.path.join(model_uri, RECORD)
    if tf.io.gfile.exists(record):
        with tf.io.gfile.GFile(record) as f:
            return float(json.load(f)["old_threshold"])
    return served


def spread(values: np.ndarray) -> str:
    """`mean ± sd` over draws (NaN draws, e.g. a rest without NORMAL images, left out)."""
    values = values[~np.isnan(values)]
    return "-" if values.size == 0 else f"{values.mean():.3f} ± {values.std():.3f}"


def kshot_rows(
    evaluated, ks: Sequence[int] = KS, count: int = DRAWS, splits: Sequence[str] = SPLITS
) -> Tuple[List[List[str]], List[List[str]]]:
    """Two tables, each a header plus rows: per architecture, split and k, the k-shot calibration; and per
    architecture and split, what `calibrate --unlabeled --adjust-prior` does with the whole split unlabelled."""
    header = ["architecture", "split", "k", "images drawn", "threshold (val)", "calibrated threshold"]
    header += [f"{measure} calibrated" for measure in MEASURES] + [f"{measure} at val thr" for measure in MEASURES]
    rows, prior_rows = [header], [PRIOR_HEADER]
    for item in evaluated:
        validation_threshold = trained_threshold(item.model_uri, float(item.model["value"]))
        policy = policy_of(item.model.get("policy", "youden"))
        present = [split for split in splits if tf.io.gfile.isdir(os.path.join(item.examples_uri, f"Split-{split}"))]
        scored = scoring.score_splits(item.examples_uri, present, item.model_uri)
        for split in present:
            labels, probabilities, paths = scored[split]
            patients, sources = patients_and_sources(split, labels, paths)
            for k in ks:
                found = draws(labels, probabilities, patients, sources, k, policy, validation_threshold, count)
                rows.append(
                    [
                        item.architecture,
                        split,
                        str(k),
                        spread(found["drawn"]),
                        f"{validation_threshold:.3f}",
                        spread(found["threshold"]),
                    ]
                    + [spread(found[m]) for m in MEASURES]
                    + [spread(found[f"{m}@val"]) for m in MEASURES]
                )
            prior_rows.append(
                [item.architecture, split] + prior_adjustment(labels, probabilities, validation_threshold)
            )
    return rows, prior_rows


PRIOR_HEADER = (
    ["architecture", "split", "pneumonia share", "EM estimate", "threshold (val)", "prior-adjusted"]
    + [f"{measure} at val thr" for measure in MEASURES]
    + [f"{measure} adjusted" for measure in MEASURES]
)


def prior_adjustment(labels: np.ndarray, probabilities: np.ndarray, validation_threshold: float) -> List[str]:
    """The cells of one `PRIOR_HEADER` row: the split's true pneumonia share, Saerens' EM estimate of it from the
    probabilities alone, and the rates at the validation threshold and at the threshold moved to that prior."""
    prevalence, _ = em_prevalence(probabilities, TRAINING_PRIOR)
    adjusted = prior_adjusted_threshold(validation_threshold, TRAINING_PRIOR, prevalence)
    before, after = rates(labels, probabilities, validation_threshold), rates(labels, probabilities, adjusted)
    return (
        [f"{labels.mean():.3f}", f"{prevalence:.3f}", f"{validation_threshold:.3f}", f"{adjusted:.3f}"]
        + [format_number(before[m]) for m in MEASURES]
        + [format_number(after[m]) for m in MEASURES]
    )
