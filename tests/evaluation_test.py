"""TFMA configuration: metric keys match what TFMA emits; blessing applies to validation only."""

import json

import pytest
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.evaluators import metrics_validator

from components import metrics_vocabulary as vocabulary
from pipeline import evaluation


@pytest.mark.parametrize("class_name, key, extra", vocabulary.METRICS)
def test_metric_keys_are_the_names_tfma_emits(class_name, key, extra):
    metric = getattr(tfma.metrics, class_name)(**(extra or {}))
    assert metric.name == key  # case included: thresholds and the results table read these keys


def tfx_view(has_baseline):
    """The config as TFX's Evaluator applies it (change thresholds dropped when there is no baseline)."""
    config = evaluation.create_eval_config(min_auc=0.9, max_auc_drop=0.01, blessing_split="eval")
    return tfma.utils.update_eval_config_with_defaults(config, has_baseline=has_baseline, rubber_stamp=True)


def validate(config, split, metrics, model_name="", auc_change=None):
    def key(name, **kwargs):
        return tfma.metrics.MetricKey(name=name, model_name=model_name, output_name="probability", **kwargs)

    keyed = {key(name): value for name, value in metrics.items()}
    if auc_change is not None:
        keyed[key("auc", is_diff=True)] = auc_change
    return metrics_validator.validate_metrics(((("split", split),), keyed), config)


def test_first_model_is_judged_by_the_validation_auc_bound_alone():
    config = tfx_view(has_baseline=False)
    assert validate(config, "eval", {"auc": 0.95}).validation_ok
    failed = validate(config, "eval", {"auc": 0.85})
    assert not failed.validation_ok
    assert failed.metric_validations_per_slice[0].failures[0].metric_key.name == "auc"
    assert validate(config, "test", {"auc": 0.5}).validation_ok  # test is reported, never decides


def test_a_regression_against_the_baseline_is_not_blessed():
    config = tfx_view(has_baseline=True)
    assert validate(config, "eval", {"auc": 0.95}, "candidate", auc_change=-0.005).validation_ok
    failed = validate(config, "eval", {"auc": 0.95}, "candidate", auc_change=-0.02)
    assert not failed.validation_ok and failed.metric_validations_per_slice[0].failures[0].metric_key.is_diff


def test_a_missing_metric_fails_rather_than_being_ignored():
    result = validate(tfx_view(has_baseline=False), "eval", {"AUC": 0.99})  # wrong case: not TFMA's key
    assert not result.validation_ok
    assert result.metric_validations_per_slice[0].failures[0].message == "Metric not found."


def test_every_slice_is_crossed_with_split_or_reported_as_pooled():
    config = evaluation.create_eval_config(min_auc=0.9, max_auc_drop=0.01, blessing_split="eval")
    keys = [tuple(spec.feature_keys) for spec in config.slicing_specs]
    assert () in keys and ("split",) in keys and ("split", "dataset", "label") in keys
    extra = {m.class_name: json.loads("{" + m.config + "}") for m in config.metrics_specs[0].metrics if m.config}
    assert extra["ConfusionMatrixAtThresholds"] == {"thresholds": [0.5]}


def test_threshold_dependent_metrics_are_also_computed_at_the_tuned_threshold():
    config = evaluation.create_eval_config(min_auc=0.9, max_auc_drop=0.01, blessing_split="eval")
    by_output = {tuple(spec.output_names): [m.class_name for m in spec.metrics] for spec in config.metrics_specs}
    threshold_dependent = {vocabulary.CLASS_OF[key] for key in vocabulary.THRESHOLD_DEPENDENT}
    assert set(by_output[("decision_score",)]) == threshold_dependent | {"AnalyticIntervals"}
    assert "AUC" in by_output[("probability",)] and "AnalyticIntervals" in by_output[("probability",)]
    assert dict(config.model_specs[0].label_keys) == {"probability": "label", "decision_score": "label"}


def test_a_missing_blessing_slice_fails_validation():
    """No `split=eval` slice at all (e.g. the validation split was left out): TFMA's combiner marks it missing
    and fails, rather than blessing on the other splits' metrics."""
    from tensorflow_model_analysis.writers.metrics_plots_and_validations_writer import CombineValidations

    config = tfx_view(has_baseline=False)

    def combined(splits):
        combiner = CombineValidations(config)
        accumulator = combiner.create_accumulator()
        for split in splits:
            accumulator = combiner.add_input(accumulator, validate(config, split, {"auc": 0.95}))
        return combiner.extract_output(accumulator)

    assert combined(["eval", "test"]).validation_ok
    missing = combined(["test", "external"])
    assert not missing.validation_ok
    assert [dict(spec.feature_values) for spec in missing.missing_slices] == [{"split": "eval"}]
