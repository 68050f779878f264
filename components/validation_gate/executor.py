"""Turns ExampleValidator's per-split anomalies, and train/serving skew, into one clear failure.

ExampleValidator (TFX 1.16) checks each split against the schema but compares no splits, so the skew
comparators in the schema (e.g. `channels`) are evaluated here: `train` against each serving-like split.
"""

import os
from typing import List

import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2
from tfx.dsl.io import fileio

ANOMALIES_FILE = "SchemaDiff.pb"
STATISTICS_FILE = "FeatureStats.pb"  # StatisticsGen's binary output per split
SKEW_KIND_PREFIX = "COMPARATOR_"  # TFDV's reasons for skew and drift


class DataAnomaliesError(RuntimeError):
    """The data broke the schema contract; the message names every anomaly."""


def _describe(split: str, anomalies: anomalies_pb2.Anomalies, only_skew: bool = False) -> List[str]:
    lines = []
    for feature, info in sorted(anomalies.anomaly_info.items()):
        reasons = [
            r
            for r in info.reason
            if not only_skew or anomalies_pb2.AnomalyInfo.Type.Name(r.type).startswith(SKEW_KIND_PREFIX)
        ]
        if not reasons:
            continue
        kinds = ", ".join(anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in reasons)
        description = "; ".join(r.description for r in reasons) if only_skew else info.description
        lines.append(f"split {split}: feature {feature!r}: {kinds}: {description}")
    if anomalies.HasField("dataset_anomaly_info") and not only_skew:
        lines.append(f"split {split}: dataset: {anomalies.dataset_anomaly_info.description}")
    return lines


def describe_anomalies(anomalies_uri: str, split_names: List[str]) -> List[str]:
    """One line per anomaly ExampleValidator recorded: split, feature, kind and TFDV's description."""
    found = []
    for split in split_names:
        with fileio.open(os.path.join(anomalies_uri, f"Split-{split}", ANOMALIES_FILE), "rb") as f:
            found += _describe(split, anomalies_pb2.Anomalies.FromString(f.read()))
    return found


def describe_skew(
    statistics_uri: str, schema: schema_pb2.Schema, skew_splits: List[str], training_split: str = "train"
) -> List[str]:
    """One line per skew comparator of the schema that `training_split` vs a serving split trips."""

    def load(split):
        return tfdv.load_stats_binary(os.path.join(statistics_uri, f"Split-{split}", STATISTICS_FILE))

    training = load(training_split)
    found = []
    for split in skew_splits:
        serving = load(split)
        anomalies = tfdv.validate_statistics(training, schema, serving_statistics=serving)
        found += _describe(f"{training_split} vs {split}", anomalies, only_skew=True)
    return found


def check(
    anomalies_uri: str,
    split_names: List[str],
    statistics_uri: str = "",
    schema_path: str = "",
    skew_splits: List[str] = (),
) -> None:
    found = describe_anomalies(anomalies_uri, split_names)
    if skew_splits:
        found += describe_skew(statistics_uri, tfdv.load_schema_text(schema_path), list(skew_splits))
    if found:
        raise DataAnomaliesError(
            f"data validation failed with {len(found)} anomal{'y' if len(found) == 1 else 'ies'} "
            f"(details in {anomalies_uri}): " + "; ".join(found)
        )
