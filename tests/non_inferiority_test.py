"""Non-inferiority to the baseline (pipeline/non_inferiority.py): the paired bootstrap's lower bound of the AUC
difference, run by TFMA itself on examples that carry both models' scores (no model needed), and its gate."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.api import model_eval_lib
from tensorflow_model_analysis.utils import config_util

from components import metrics_vocabulary as vocabulary
from pipeline import evaluation, non_inferiority
from pneumonia.runs import evaluation as run_evaluation

OUTPUTS = ("probability", "decision_score")


def pairwise_auc(labels, scores):
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
    return wins.mean()


def test_weighted_aucs_with_unit_weights_is_the_pairwise_auc():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300).astype(float)
    scores = np.round(labels * 0.7 + rng.random(300), 2)  # rounded: ties count half
    assert non_inferiority.weighted_aucs(labels, scores, np.ones((1, 300)))[0] == pytest.approx(
        pairwise_auc(labels, scores)
    )


def test_the_paired_interval_holds_the_difference_and_sees_a_worse_model():
    rng = np.random.default_rng(1)
    labels = np.arange(600) % 2
    signal = rng.normal(0, 1, 600)
    candidate = labels * 1.5 + signal
    point, lower, upper = non_inferiority.paired_auc_difference(labels, candidate, candidate)
    assert point == 0.0 and lower == 0.0 and upper == 0.0  # a model against itself: no difference at all
    worse = labels * 0.8 + signal
    point, lower, upper = non_inferiority.paired_auc_difference(labels, worse, candidate)
    assert lower < point < upper < -0.05  # clearly inferior, and the interval says so
    assert np.isnan(non_inferiority.paired_auc_difference(np.ones(10), candidate[:10], candidate[:10])[1])


def scored_examples(path, seed=0):
    """`test`: the candidate scores 200 examples worse than the baseline; `eval`: the two are equal."""
    rng = np.random.default_rng(seed)
    with tf.io.TFRecordWriter(path) as writer:
        for split, candidate_separation in (("eval", 1.5), ("test", 0.6)):
            labels = np.arange(200) % 2
            noise = rng.normal(0, 1, 200)
            baseline = 1 / (1 + np.exp(-(1.5 * (labels - 0.5) * 2 + noise)))
            candidate = 1 / (1 + np.exp(-(candidate_separation * (labels - 0.5) * 2 + noise)))
            for label, c, b in zip(labels, candidate, baseline):
                floats = {"probability": c, "decision_score": c, "baseline_probability": b, "baseline_decision": b}
                feature = {
                    key: tf.train.Feature(float_list=tf.train.FloatList(value=[value])) for key, value in floats.items()
                }
                feature["split"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[split.encode()]))
                feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def test_the_gate_fails_a_candidate_worse_than_the_baseline_on_test_only(tmp_path, monkeypatch):
    data = str(tmp_path / "examples.tfrecord")
    scored_examples(data)
    config = evaluation.create_eval_config(0.5, 1.0, "eval", non_inferiority_margin=0.02)
    del config.slicing_specs[2:]  # overall and split: enough here
    candidate = config.model_specs[0]
    candidate.name = "candidate"
    baseline = config.model_specs.add()
    baseline.CopyFrom(candidate)
    baseline.name, baseline.is_baseline = "baseline", True
    baseline.prediction_keys.clear()
    baseline.prediction_keys.update({"probability": "baseline_probability", "decision_score": "baseline_decision"})
    # TFMA infers a baseline from the models it is given; here both models' scores are features, so say so.
    monkeypatch.setattr(
        model_eval_lib,
        "_update_eval_config_with_defaults",
        lambda eval_config, _: config_util.update_eval_config_with_defaults(eval_config, has_baseline=True),
    )
    output = str(tmp_path / "evaluation")
    tfma.run_model_analysis(eval_config=config, data_location=data, output_path=output)
    failures = {
        (per_slice.slice_key.single_slice_keys[0].bytes_value.decode(), failure.metric_key.name)
        for per_slice in tfma.load_validation_result(output).metric_validations_per_slice
        for failure in per_slice.failures
    }
    assert failures == {("test", vocabulary.AUC_DIFFERENCE_LOWER_BOUND)}
    lines = run_evaluation.validation_failures(output)
    assert any(line.startswith("non-inferiority: ") and "--non-inferiority-margin 0.02" in line for line in lines), (
        lines
    )


def test_a_bad_margin_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"--non-inferiority-margin 1.5 must be in \[0, 1\)"):
        evaluation.create_eval_config(0.5, 0.01, "eval", non_inferiority_margin=1.5)
