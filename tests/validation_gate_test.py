"""The data validation gate names every anomaly and fails; clean splits pass."""
import os

import pytest
from tensorflow_metadata.proto.v0 import anomalies_pb2

from components.validation_gate import executor


def write_anomalies(root, split, anomalies):
    os.makedirs(os.path.join(root, f"Split-{split}"))
    with open(os.path.join(root, f"Split-{split}", executor.ANOMALIES_FILE), "wb") as f:
        f.write(anomalies.SerializeToString())


def test_clean_splits_pass(tmp_path):
    write_anomalies(str(tmp_path), "train", anomalies_pb2.Anomalies())
    executor.check(str(tmp_path), ["train"])


def test_anomalies_fail_with_feature_kind_and_path(tmp_path):
    anomalies = anomalies_pb2.Anomalies()
    info = anomalies.anomaly_info["label"]
    info.description = "Unexpectedly large value: 2."
    info.reason.add(type=anomalies_pb2.AnomalyInfo.INT_TYPE_BIG_INT)
    write_anomalies(str(tmp_path), "train", anomalies_pb2.Anomalies())
    write_anomalies(str(tmp_path), "test", anomalies)
    with pytest.raises(executor.DataAnomaliesError) as error:
        executor.check(str(tmp_path), ["train", "test"])
    message = str(error.value)
    assert "split test: feature 'label': INT_TYPE_BIG_INT: Unexpectedly large value: 2." in message
    assert str(tmp_path) in message and "1 anomaly" in message
