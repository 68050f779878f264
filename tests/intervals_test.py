"""The Evaluator's 95% intervals (analytic, the default, and TFMA's bootstrap) and the site gate on their lower
bound, run by TFMA itself on scored examples (no model needed: the examples carry the `probability` and
`decision_score` a model would have produced)."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.evaluators import metrics_validator

from components import metrics_vocabulary as vocabulary
from components.report import tfma_metrics
from pipeline import evaluation
from pneumonia.runs import evaluation as run_evaluation


def scored_examples(path: str, seed: int = 0) -> None:
    """`eval`: 60 well-separated examples; `calibration`: 40 examples where the served threshold misses a
    third of the PNEUMONIA cases; `tiny`: 8 examples."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, count, separation in (("eval", 60, 1.2), ("calibration", 40, 0.3), ("tiny", 8, 3.0)):
        labels = np.arange(count) % 2
        probabilities = 1 / (1 + np.exp(-(separation * (labels - 0.5) * 2 + rng.normal(0, 1, count))))
        rows += [(split, int(label), float(p)) for label, p in zip(labels, probabilities)]
    with tf.io.TFRecordWriter(path) as writer:
        for split, label, probability in rows:
            features = {
                "split": tf.train.Feature(bytes_list=tf.train.BytesList(value=[split.encode()])),
                "dataset": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"kermany"])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                "probability": tf.train.Feature(float_list=tf.train.FloatList(value=[probability])),
                "decision_score": tf.train.Feature(float_list=tf.train.FloatList(value=[probability])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())


def evaluate(tmp_path, name: str, site_gate=None, intervals: str = vocabulary.DEFAULT_INTERVALS):
    data = str(tmp_path / "examples.tfrecord")
    if not (tmp_path / "examples.tfrecord").exists():
        scored_examples(data)
    config = evaluation.create_eval_config(0.5, 0.01, "eval", site_gate, intervals)
    del config.slicing_specs[2:]  # overall and split: enough here, and quicker
    for spec in config.metrics_specs:  # no baseline model here (TFX drops these on a first run too)
        for metric in spec.metrics:
            for threshold in metric.per_slice_thresholds:
                threshold.threshold.ClearField("change_threshold")
    output = str(tmp_path / name)
    tfma.run_model_analysis(eval_config=config, data_location=data, output_path=output)
    return output


@pytest.fixture(scope="module", params=[vocabulary.ANALYTIC, vocabulary.BOOTSTRAP])
def gated(request, tmp_path_factory):
    """One TFMA run per kind of interval, gated on the lower bounds of sensitivity and specificity on
    `calibration`."""
    tmp_path = tmp_path_factory.mktemp(request.param)
    return evaluate(tmp_path, "gated", evaluation.SiteGate("calibration", 0.5, 0.5, on_lower_bound=True), request.param)


def test_every_metric_carries_a_95_percent_interval_around_its_value(gated):
    table = run_evaluation.slice_metrics(gated)
    row = table["split=eval"]
    assert (row[vocabulary.POSITIVES], row[vocabulary.NEGATIVES]) == (30, 30)
    for key in ("auc", "recall@threshold", "specificity@threshold", "binary_accuracy"):
        lower, upper = vocabulary.interval_keys(key)
        assert row[lower] < row[upper], key
        assert row[lower] - 0.05 <= row[key] <= row[upper] + 0.05, key
    cell = tfma_metrics.interval_cell(row, "auc")
    assert cell.startswith(f"{row['auc']:.3f} [") and cell.endswith("]")


def test_a_slice_too_small_for_an_interval_says_so_instead_of_a_number(gated):
    row = run_evaluation.slice_metrics(gated)["split=tiny"]
    assert tfma_metrics.interval_cell(row, "recall") == f"{row['recall']:.3f} (n=4: too few for a CI)"
    assert "n=8" in tfma_metrics.interval_cell(row, "binary_accuracy")


def test_the_gate_judges_the_lower_end_of_the_interval_the_tables_show(gated):
    row = run_evaluation.slice_metrics(gated)["split=calibration"]
    validation = tfma.load_validation_result(gated)
    [failures] = [s.failures for s in validation.metric_validations_per_slice]
    judged = {f.metric_key.name: f.metric_value.double_value.value for f in failures}
    # The calibration slice misses a third of its PNEUMONIA cases: the sensitivity bound fails, on the lower bound.
    assert "recall_lower_bound" in judged
    assert judged["recall_lower_bound"] == pytest.approx(row["recall@threshold" + vocabulary.LOWER], abs=1e-6)
    assert not validation.validation_ok
    lines = run_evaluation.validation_failures(gated)
    assert any(
        line.startswith("site gate: sensitivity lower 95% bound") and "--site-min-sensitivity 0.5" in line
        for line in lines
    ), lines


def test_the_gate_on_point_estimates_judges_the_served_threshold_on_the_site_slice_only():
    config = evaluation.create_eval_config(0.5, 0.01, "eval", evaluation.SiteGate("calibration", 0.9, 0.8))
    config = tfma.utils.update_eval_config_with_defaults(config, has_baseline=False, rubber_stamp=True)

    def validate(split, sensitivity, specificity):
        def key(name, output):
            return tfma.metrics.MetricKey(name=name, output_name=output)

        metrics = {
            key("auc", "probability"): 0.9,
            key("recall", "decision_score"): sensitivity,
            key("specificity", "decision_score"): specificity,
        }
        return metrics_validator.validate_metrics(((("split", split),), metrics), config)

    assert validate("calibration", 0.95, 0.85).validation_ok
    failed = validate("calibration", 0.95, 0.7)
    assert [f.metric_key.name for f in failed.metric_validations_per_slice[0].failures] == ["specificity"]
    assert validate("test", 0.1, 0.1).validation_ok  # other splits are reported, never gated


def test_gate_bounds_are_checked():
    with pytest.raises(ValueError, match="--site-min-sensitivity 1.5 must be between 0 and 1"):
        evaluation.SiteGate("calibration", 1.5)


def test_gate_settings_are_refused_before_anything_runs(tmp_path):
    from pipeline.config import RunConfig
    from pipeline.pipeline import pipeline_from_config

    with pytest.raises(ValueError, match="--gate-on-lower-bound needs --site-min-sensitivity"):
        RunConfig(root=str(tmp_path), gate_on_lower_bound=True).site_gate()
    config = RunConfig(root=str(tmp_path), site_min_specificity=0.8, gate_on_lower_bound=True)
    assert config.site_gate().bounds() == [("specificity_lower_bound", "Specificity", 0.8)]
    with pytest.raises(ValueError, match="needs a calibration split"):
        pipeline_from_config(config)  # the default splits hold no calibration split
    with pytest.raises(ValueError, match="needs confidence intervals"):
        evaluation.create_eval_config(0.5, 0.01, "eval", config.site_gate(), confidence_intervals="none")


def test_analytic_and_bootstrap_intervals_agree_on_the_same_slice(tmp_path):
    """On the 60-example validation slice the two kinds of interval hold each other's point estimate and have
    widths within a factor of two (the bootstrap's 20 replicates make its own width noisy)."""
    tables = {
        kind: run_evaluation.slice_metrics(evaluate(tmp_path, kind, intervals=kind))["split=eval"]
        for kind in (vocabulary.ANALYTIC, vocabulary.BOOTSTRAP)
    }
    for key in ("auc", "recall@threshold", "specificity@threshold", "binary_accuracy"):
        widths = []
        for row in tables.values():
            lower, upper = (row[end] for end in vocabulary.interval_keys(key))
            assert lower <= row[key] <= upper, key
            widths.append(upper - lower)
        assert 0.5 <= widths[0] / widths[1] <= 2.0, (key, widths)
