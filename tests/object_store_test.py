"""Runs under a gs:// root: every artifact the exporter, warm-start check, data gate, prepare and Pusher
write or read lands in the object store, and nothing on the local disk.

The store is Google Cloud Storage's API served on loopback, reached by TensorFlow's own gs:// filesystem
(tests/gcs_emulator.py); the report and `compare` are checked the same way in tests/report_executor_test.py.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2

from components.validation_gate import executor as gate
from pneumonia.data import audit, prepare
from pneumonia.data import sources as data_sources
from serving import repository
from tests.gcs_emulator import bucket, files_under, gcs  # noqa: F401 (fixtures)
from tests.prepare_test import synthetic_xrays
from tests.serving_fixtures import IMAGE_SIZE, export_tiny_model, png
from tests.signatures_test import serve_both
from trainer import models, signatures, task
from trainer.config import TrainerConfig

gfile = tf.io.gfile


def test_export_writes_the_threshold_into_the_bucket_and_warm_start_finds_the_weights(bucket):
    model_uri = f"{bucket}/Trainer/model/1"
    serving_dir = f"{model_uri}/Format-Serving"
    export_tiny_model(serving_dir, f"{bucket}/Trainer/model_run/1", seed=1)
    assert signatures.read_metadata(serving_dir)["architecture"] == "cnn"
    serve_both(serving_dir, [png(seed=3)])  # loads from the bucket; the threshold asset came along
    keras_model = models.build("cnn", IMAGE_SIZE, **models.REGISTRY["cnn"].tiny)
    gfile.makedirs(os.path.dirname(task.keras_weights_path(serving_dir)))
    keras_model.save_weights(task.keras_weights_path(serving_dir))
    config = TrainerConfig(architecture="cnn", image_size=IMAGE_SIZE, model_config=dict(models.REGISTRY["cnn"].tiny))
    warm = task.build_model(config, base_model=serving_dir)
    for loaded, saved in zip(warm.get_weights(), keras_model.get_weights()):
        np.testing.assert_array_equal(loaded, saved)


def test_the_data_gate_reads_anomalies_from_the_bucket(bucket):
    anomalies = anomalies_pb2.Anomalies()
    anomalies.anomaly_info["label"].description = "Unexpectedly large value: 2."
    anomalies.anomaly_info["label"].reason.add(type=anomalies_pb2.AnomalyInfo.INT_TYPE_BIG_INT)
    gfile.makedirs(f"{bucket}/anomalies/Split-eval")
    with gfile.GFile(f"{bucket}/anomalies/Split-eval/{gate.ANOMALIES_FILE}", "wb") as f:
        f.write(anomalies.SerializeToString())
    with pytest.raises(gate.DataAnomaliesError, match="split eval: feature 'label': INT_TYPE_BIG_INT"):
        gate.check(f"{bucket}/anomalies", ["eval"])


def test_prepare_writes_its_shards_and_report_into_the_bucket(bucket, tmp_path):
    names = [
        f"{split}/NORMAL/{split}-IM-{i:04d}-0001.jpeg" for split, n in (("train", 4), ("test", 2)) for i in range(n)
    ]
    names += [
        f"{split}/PNEUMONIA/{split}-person{i}_bacteria_{i}.jpeg"
        for split, n in (("train", 4), ("test", 2))
        for i in range(n)
    ]
    source = data_sources.Source.parse(f"kermany={synthetic_xrays(str(tmp_path / 'raw'), names)}")
    out = f"{bucket}/data"
    report = prepare.prepare([source], out, eval_fraction=0.25)
    assert report["written"] == report["files_seen"] == 12
    written = files_under(out)
    assert audit.REPORT_NAME in written
    assert sorted({name.split("/")[0] for name in written if name != audit.REPORT_NAME}) == ["eval", "test", "train"]
    assert not gfile.exists(f"{out}.staging")
    assert audit.read_report(out) == report
    assert prepare.prepare([source], out, eval_fraction=0.25) == report  # found again: reused, not rewritten


def test_pusher_writes_a_complete_version_into_the_bucket(bucket, tmp_path):
    model = export_tiny_model(str(tmp_path / "model"), str(tmp_path / "work"), seed=1)
    base = f"{bucket}/serving/pneumonia"
    fingerprint = repository.model_fingerprint(model)
    version = repository.push_atomically(model, base, fingerprint, model)
    assert repository.servable_versions(base) == [int(version)]
    assert repository.latest_fingerprint(base) == fingerprint
    pushed = files_under(f"{base}/{version}")
    assert {"saved_model.pb", repository.PUSH_RECORD, f"assets/{repository.THRESHOLD_ASSET}"} <= set(pushed)
    assert set(pushed) == {*files_under(model), repository.PUSH_RECORD}  # every file, none under a `./` folder
    with gfile.GFile(f"{base}/{version}/{repository.PUSH_RECORD}") as f:
        assert json.load(f)["source"] == model
