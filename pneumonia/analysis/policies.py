"""The threshold policies side by side: each one chosen on the same validation scores, then applied to the
evaluation-only splits.

A run's recipe fixes its policy before training; this table is the ablation that shows what another
choice would have changed. It scores the exported model (its `serving_default` signature, as TFMA and TF
Serving do) on the examples its Evaluator read.
"""

from typing import Dict, List, Tuple

import numpy as np

from pipeline.config import BLESSING_SPLIT
from pneumonia.analysis.tables import format_number
from pneumonia.runs import scoring
from trainer import threshold

POLICIES = ("youden", "sensitivity:0.95", "sensitivity:0.98", "sensitivity:0.99", "median-midpoint", "fixed:0.5")


def rates(labels: np.ndarray, probabilities: np.ndarray, value: float) -> Dict[str, float]:
    """Accuracy, sensitivity and specificity of 'PNEUMONIA when probability >= value' (NaN for an absent class)."""
    predicted = probabilities >= value
    positives, negatives = labels == 1, labels == 0
    return {
        "accuracy": float(np.mean(predicted == positives)),
        "sensitivity": float(predicted[positives].mean()) if positives.any() else float("nan"),
        "specificity": float((~predicted[negatives]).mean()) if negatives.any() else float("nan"),
    }


def policy_rows(evaluated, splits: Tuple[str, ...] = ("test", "external")) -> List[List[str]]:
    """Header plus one row per architecture and policy; the recipe's own policy is marked."""
    header = ["architecture", "policy", "threshold", "val sens", "val spec"]
    header += [f"{split} {measure}" for split in splits for measure in ("acc", "sens", "spec")]
    rows = [header]
    for item in evaluated:
        scored = scoring.score_splits(item.examples_uri, [BLESSING_SPLIT, *splits], item.model_uri)
        validation = scored[BLESSING_SPLIT][:2]
        for policy in POLICIES:
            chosen = threshold.choose(*validation, policy)
            shown = f"**{policy}** (recipe)" if policy == item.model.get("policy") else policy
            row = [
                item.architecture,
                shown,
                format_number(chosen.value),
                format_number(chosen.sensitivity),
                format_number(chosen.specificity),
            ]
            for split in splits:
                figures = rates(*scored[split][:2], chosen.value)
                row += [format_number(figures[key]) for key in ("accuracy", "sensitivity", "specificity")]
            rows.append(row)
    return rows
