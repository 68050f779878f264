"""The threshold policies side by side: each one chosen on the same validation scores, then applied to the
evaluation-only splits.

A run's recipe fixes its policy before training; this table is the ablation that shows what another
choice would have changed. It scores the exported model (its `serving_default` signature, as TFMA and TF
Serving do) on the examples its Evaluator read.
"""
from typing import Dict, List, Tuple

import numpy as np

from pipeline.config import BLESSING_SPLIT
from trainer import threshold

POLICIES = ("youden", "sensitivity:0.95", "sensitivity:0.98", "sensitivity:0.99", "median-midpoint", "fixed:0.5")
ALL_IMAGES = 10 ** 9


def split_scores(examples_uri: str, split: str, model_uri: str) -> Tuple[np.ndarray, np.ndarray]:
    """(labels, pneumonia probabilities) of every example of one split."""
    from components.report import executor

    sample = executor.read_split(examples_uri, split, ALL_IMAGES)
    return np.array(sample.labels), executor.predict(model_uri, sample.serialized)


def rates(labels: np.ndarray, probabilities: np.ndarray, value: float) -> Dict[str, float]:
    """Accuracy, sensitivity and specificity of 'PNEUMONIA when probability >= value' (NaN for an absent class)."""
    predicted = probabilities >= value
    positives, negatives = labels == 1, labels == 0
    return {"accuracy": float(np.mean(predicted == positives)),
            "sensitivity": float(predicted[positives].mean()) if positives.any() else float("nan"),
            "specificity": float((~predicted[negatives]).mean()) if negatives.any() else float("nan")}


def policy_rows(evaluated, splits: Tuple[str, ...] = ("test", "external")) -> List[List[str]]:
    """Header plus one row per architecture and policy; the recipe's own policy is marked."""
    from pneumonia.report import _number

    header = ["architecture", "policy", "threshold", "val sens", "val spec"]
    header += [f"{split} {measure}" for split in splits for measure in ("acc", "sens", "spec")]
    rows = [header]
    for item in evaluated:
        validation = split_scores(item.examples_uri, BLESSING_SPLIT, item.model_uri)
        reported = {split: split_scores(item.examples_uri, split, item.model_uri) for split in splits}
        for policy in POLICIES:
            chosen = threshold.choose(*validation, policy)
            shown = f"**{policy}** (recipe)" if policy == item.model.get("policy") else policy
            row = [item.architecture, shown, _number(chosen.value), _number(chosen.sensitivity),
                   _number(chosen.specificity)]
            for split in splits:
                figures = rates(*reported[split], chosen.value)
                row += [_number(figures[key]) for key in ("accuracy", "sensitivity", "specificity")]
            rows.append(row)
    return rows
