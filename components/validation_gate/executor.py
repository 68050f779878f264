"""Reads ExampleValidator's per-split anomalies and turns any into one clear failure."""
import os
from typing import List

from tensorflow_metadata.proto.v0 import anomalies_pb2

ANOMALIES_FILE = "SchemaDiff.pb"


class DataAnomaliesError(RuntimeError):
    """The data broke the schema contract; the message names every anomaly."""


def describe_anomalies(anomalies_uri: str, split_names: List[str]) -> List[str]:
    """One line per anomaly: split, feature, kind and TFDV's description."""
    found = []
    for split in split_names:
        path = os.path.join(anomalies_uri, f"Split-{split}", ANOMALIES_FILE)
        with open(path, "rb") as f:
            anomalies = anomalies_pb2.Anomalies.FromString(f.read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            kinds = ", ".join(anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason) or "UNKNOWN"
            found.append(f"split {split}: feature {feature!r}: {kinds}: {info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            found.append(f"split {split}: dataset: {anomalies.dataset_anomaly_info.description}")
    return found


def check(anomalies_uri: str, split_names: List[str]) -> None:
    found = describe_anomalies(anomalies_uri, split_names)
    if found:
        raise DataAnomaliesError(
            f"data validation failed with {len(found)} anomal{'y' if len(found) == 1 else 'ies'} "
            f"(details in {anomalies_uri}): " + "; ".join(found))
