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


def test_skew_between_train_and_a_serving_split_is_named(tmp_path):
    import tensorflow_data_validation as tfdv
    from tensorflow_metadata.proto.v0 import statistics_pb2

    from pipeline.pipeline import SCHEMA_PATH

    def channel_statistics(channels):
        stats = statistics_pb2.DatasetFeatureStatisticsList()
        dataset = stats.datasets.add(num_examples=100)
        feature = dataset.features.add(type=statistics_pb2.FeatureNameStatistics.INT)
        feature.path.step.append("channels")
        feature.string_stats.common_stats.num_non_missing = 100
        feature.string_stats.rank_histogram.buckets.add(label=str(channels), sample_count=100)
        return stats

    for split, channels in [("train", 1), ("eval", 1), ("test", 3)]:
        os.makedirs(tmp_path / "stats" / f"Split-{split}")
        (tmp_path / "stats" / f"Split-{split}" / executor.STATISTICS_FILE).write_bytes(
            channel_statistics(channels).SerializeToString()
        )
    found = executor.describe_skew(str(tmp_path / "stats"), tfdv.load_schema_text(SCHEMA_PATH), ["eval", "test"])
    assert len(found) == 1 and found[0].startswith("split train vs test: feature 'channels': COMPARATOR_L_INFTY_HIGH")
