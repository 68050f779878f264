"""TFMA configuration: clinical metrics per split and dataset, and the blessing rule.

TFX's Evaluator pools every example split into one set, so each split is its own slice (the `split`
feature) and every other slice is also crossed with `split`. The blessing thresholds apply to the
validation slice only: test and external splits are reported, never used to decide.

Metrics at 0.5 are computed on the model's `probability`; the threshold-dependent ones are computed
again on its `decision_score`, which puts the model's tuned threshold at 0.5, so TFMA also reports them
at the operating point the model actually serves (keys suffixed `@threshold` when read back).
"""
import json
from typing import Dict, Optional

import tensorflow_model_analysis as tfma

# (TFMA class name, the metric key TFMA emits for it, extra config): results are read back by key, and a
# test checks each key against what TFMA emits, so a threshold can never name a metric that isn't there.
METRICS = (
    ("ExampleCount", "example_count", None),
    ("AUC", "auc", None),
    ("AUCPrecisionRecall", "auc_precision_recall", None),
    ("BinaryAccuracy", "binary_accuracy", None),
    ("Recall", "recall", None),  # sensitivity
    ("Specificity", "specificity", None),
    ("Precision", "precision", None),
    ("F1Score", "f1_score", None),
    ("MeanSquaredError", "brier_score", {"name": "brier_score"}),  # Brier score on probabilities
    ("Calibration", "calibration", None),  # mean prediction / mean label
    ("ConfusionMatrixAtThresholds", "confusion_matrix_at_thresholds", {"thresholds": [0.5]}),
)
PROBABILITY_OUTPUT = "probability"
DECISION_OUTPUT = "decision_score"
AT_THRESHOLD = ("BinaryAccuracy", "Recall", "Specificity", "Precision", "F1Score", "ConfusionMatrixAtThresholds")
# Every figure is per split; the uncrossed slices exist for the pooled view TFX gives, and say so.
SLICE_FEATURES = (
    ("split",), ("split", "dataset"), ("split", "source"), ("split", "label"), ("split", "pathogen"),
    ("split", "dataset", "label"),
    ("split", "patient_in_train"), ("split", "label", "patient_in_train"),  # unseen vs seen patients
    ("dataset",), ("label",), ("pathogen",), ("dataset", "label"),
)


def blessing_threshold(min_auc: float, max_auc_drop: float, blessing_split: str) -> tfma.PerSliceMetricThreshold:
    """AUC on the validation slice: above `min_auc`, and no more than `max_auc_drop` below the baseline."""
    return tfma.PerSliceMetricThreshold(
        slicing_specs=[tfma.SlicingSpec(feature_values={"split": blessing_split})],
        threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_auc}),
            change_threshold=tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -max_auc_drop}),
        ),
    )


def _metric_config(class_name: str, extra: Optional[Dict]) -> tfma.MetricConfig:
    config = tfma.MetricConfig(class_name=class_name)
    if extra:
        config.config = json.dumps(extra)[1:-1]  # TFMA takes the JSON object's members
    return config


def create_eval_config(min_auc: float, max_auc_drop: float, blessing_split: str) -> tfma.EvalConfig:
    at_half, at_threshold = [], []
    for class_name, _, extra in METRICS:
        config = _metric_config(class_name, extra)
        if class_name == "AUC":
            config.per_slice_thresholds.append(blessing_threshold(min_auc, max_auc_drop, blessing_split))
        at_half.append(config)
        if class_name in AT_THRESHOLD:
            at_threshold.append(_metric_config(class_name, extra))
    outputs = (PROBABILITY_OUTPUT, DECISION_OUTPUT)
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_keys={o: "label" for o in outputs},
                                    prediction_keys={o: o for o in outputs})],
        slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=list(keys)) for keys in SLICE_FEATURES],
        metrics_specs=[tfma.MetricsSpec(metrics=at_half, output_names=[PROBABILITY_OUTPUT]),
                       tfma.MetricsSpec(metrics=at_threshold, output_names=[DECISION_OUTPUT])],
    )
