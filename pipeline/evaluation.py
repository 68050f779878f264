"""TFMA configuration: clinical metrics per split and dataset, and the blessing rule.

TFX's Evaluator pools every example split into one set, so each split is its own slice (the `split`
feature), and the blessing thresholds apply to the validation slice only: test and external splits
are reported, never used to decide.
"""
import tensorflow_model_analysis as tfma

# (TFMA class name, the metric key TFMA emits for it): the key is what results are read back by.
METRICS = (
    ("ExampleCount", "example_count"),
    ("AUC", "auc"),
    ("BinaryAccuracy", "binary_accuracy"),
    ("Recall", "recall"),  # sensitivity
    ("Specificity", "specificity"),
    ("Precision", "precision"),
)
SLICE_FEATURES = (("split",), ("dataset",), ("dataset", "split"))


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


def create_eval_config(min_auc: float, max_auc_drop: float, blessing_split: str) -> tfma.EvalConfig:
    metrics = []
    for class_name, _ in METRICS:
        config = tfma.MetricConfig(class_name=class_name)
        if class_name == "AUC":
            config.per_slice_thresholds.append(blessing_threshold(min_auc, max_auc_drop, blessing_split))
        metrics.append(config)
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key="label",
                                    prediction_key="probability")],
        slicing_specs=[tfma.SlicingSpec()] + [tfma.SlicingSpec(feature_keys=list(keys)) for keys in SLICE_FEATURES],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)],
    )
