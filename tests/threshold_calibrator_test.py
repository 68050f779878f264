"""ThresholdCalibrator: the threshold chosen on the calibration split, re-exported in both signatures with the
same weights; pass-through without the split; bad samples refused; the cost policy; the bootstrap interval."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components.report import scoring
from components.threshold_calibrator import calibration, executor
from serving.repository import model_fingerprint, serving_model_dir
from tests.signatures_test import serve_both
from trainer import models, ood, signatures, threshold
from trainer.threshold import Threshold

IMAGE_SIZE = 64


def write_split(examples_uri: str, split: str, files) -> None:
    folder = os.path.join(examples_uri, f"Split-{split}")
    os.makedirs(folder)
    with tf.io.TFRecordWriter(os.path.join(folder, "data.gz"), "GZIP") as writer:
        for name in files:
            label = int("PNEUMONIA" in name)
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[open(name, "rb").read()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                "dataset": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"kermany"])),
                "source_path": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


@pytest.fixture(scope="module")
def trained(shared_data, tmp_path_factory):
    """A tiny exported model (threshold 0.5 from `youden` on validation) and examples with a calibration split
    of 12 NORMAL and 12 PNEUMONIA real test images."""
    tmp = tmp_path_factory.mktemp("calibrator")
    files = {
        label: sorted(glob.glob(f"{shared_data}/chest_xray/test/{label}/*.jpeg")) for label in ("NORMAL", "PNEUMONIA")
    }
    examples = str(tmp / "examples")
    write_split(examples, "calibration", files["NORMAL"][:12] + files["PNEUMONIA"][:12])
    write_split(examples, "normal_only", files["NORMAL"][12:24])
    write_split(examples, "few", files["NORMAL"][:12] + files["PNEUMONIA"][:9])
    tf.keras.utils.set_random_seed(7)
    settings = dict(models.REGISTRY["cnn"].tiny)
    model_uri = str(tmp / "model")
    model = models.build("cnn", IMAGE_SIZE, **settings)
    signatures.export(
        model,
        serving_model_dir(model_uri),
        IMAGE_SIZE,
        Threshold(0.5, "youden", 0.9, 0.9, 50),
        str(tmp / "work"),
        "cnn",
        settings,
        {"train_seconds": 12.0},
        guard=ood.noise_guard(model, IMAGE_SIZE),
    )
    return examples, model_uri, files


def test_threshold_is_chosen_on_the_calibration_split_and_served_by_both_signatures(trained, tmp_path):
    examples, model_uri, files = trained
    out = str(tmp_path / "calibrated")
    record = executor.run(examples, ["calibration", "test"], model_uri, out, "calibration", 50, 0)
    sample = scoring.read_split(examples, "calibration", cap=100)
    scores = executor.probabilities(serving_model_dir(model_uri), sample.serialized)
    expected = threshold.choose(np.array(sample.labels), scores, "youden")
    assert record["new_threshold"] == pytest.approx(expected.value) and record["old_threshold"] == 0.5
    assert (record["normal"], record["pneumonia"]) == (12, 12) and record["calibrated"]
    lower, upper = record["threshold_interval"]
    assert lower <= upper and lower <= expected.value + 1e-6 and upper >= expected.value - 1e-6

    exported = serving_model_dir(out)
    metadata = signatures.read_metadata(exported)
    assert (
        metadata["value"] == pytest.approx(expected.value) and metadata["policy"] == "youden on the calibration split"
    )
    assert metadata["training"] == {"train_seconds": 12.0} and metadata["architecture"] == "cnn"
    images = [open(f, "rb").read() for f in files["NORMAL"][:3] + files["PNEUMONIA"][:3]]
    outputs = serve_both(exported, images)
    np.testing.assert_allclose(outputs["threshold"], expected.value, rtol=1e-6)
    np.testing.assert_allclose(
        outputs["probability"], serve_both(serving_model_dir(model_uri), images)["probability"], atol=1e-6
    )
    # decision_score puts the new threshold at 0.5
    assert list(outputs["decision_score"] > 0.5) == list(outputs["probability"] >= expected.value)
    with open(os.path.join(exported, executor.SAVED_MODEL_RECORD)) as f:
        assert json.load(f)["new_threshold"] == record["new_threshold"]
    with open(os.path.join(out, executor.RECORD)) as f:
        assert json.load(f) == json.loads(json.dumps(record))


def test_without_a_calibration_split_the_model_passes_through_unchanged(trained, tmp_path):
    examples, model_uri, _ = trained
    out = str(tmp_path / "passed")
    record = executor.run(examples, ["eval", "test"], model_uri, out, "calibration", 50, 0)
    assert not record["calibrated"] and "no calibration split" in record["note"]
    assert record["new_threshold"] == record["old_threshold"] == 0.5
    assert model_fingerprint(serving_model_dir(out)) == model_fingerprint(
        serving_model_dir(model_uri)
    )  # same bytes: the Pusher sees the same model


@pytest.mark.parametrize(
    "split, message",
    [
        ("normal_only", "has NORMAL images only"),
        ("few", "has 12 NORMAL and 9 PNEUMONIA images: at least 10 of each"),
    ],
)
def test_a_sample_that_cannot_set_a_threshold_fails_and_writes_no_model(trained, tmp_path, split, message):
    examples, model_uri, _ = trained
    with pytest.raises(calibration.CalibrationError, match=message):
        executor.run(examples, [split], model_uri, str(tmp_path / "out"), split, 50, 0)
    assert not os.path.exists(serving_model_dir(str(tmp_path / "out")))


def test_cost_policy_trades_false_negatives_against_false_positives():
    labels = np.array([0] * 6 + [1] * 4)
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.35, 0.7, 0.8, 0.9])
    assert threshold.choose(labels, scores, "cost:1").value == 0.7  # one miss costs one false alarm
    assert threshold.choose(labels, scores, "cost:10").value == 0.35  # a miss costs ten: catch them all
    with pytest.raises(ValueError, match="positive number"):
        threshold.parse("cost:0")


def test_the_bootstrap_interval_narrows_as_the_sample_grows():
    rng = np.random.default_rng(0)

    def width(count):
        labels = np.arange(count) % 2
        scores = 1 / (1 + np.exp(-(2 * labels - 1 + rng.normal(0, 1, count))))
        lower, upper = calibration.bootstrap_interval(labels, scores, "youden", samples=100, seed=1)
        return upper - lower

    assert width(2000) < width(40)


def test_wilson_interval_covers_the_proportion_and_stays_in_bounds():
    assert calibration.wilson_interval(10, 10)[1] == pytest.approx(1.0) and calibration.wilson_interval(10, 10)[0] > 0.6
    lower, upper = calibration.wilson_interval(45, 50)
    assert lower < 0.9 < upper
