"""Model server configuration in TF Serving's own format (ModelServerConfig text proto).

One format for both backends: `pneumonia serve` reads or generates it, and the official
`tensorflow_model_server --model_config_file` reads the same file, so version policies and
version labels mean the same thing in development and in production.
"""

import os
from typing import Dict, List, Optional, Sequence

from google.protobuf import text_format
from tensorflow_serving.config import logging_config_pb2, model_server_config_pb2

from serving import metrics
from serving.tf_serving_protos import MonitoringConfig

POLICIES = ("latest", "all", "specific")
# The request log collectors serving/request_log.py implements: type -> whether the image bytes are logged.
COLLECTOR_TYPES = {"": False, "tfrecord": False, "tfrecord_with_images": True}


def model_config(
    name: str,
    base_path: str,
    policy: str = "latest",
    versions: Sequence[int] = (),
    num_latest: int = 1,
    labels: Optional[Dict[str, int]] = None,
) -> model_server_config_pb2.ModelServerConfig:
    """A one-model config: `latest` keeps the newest `num_latest` versions, `all` every version,
    `specific` exactly `versions`; `labels` maps e.g. stable/canary to versions."""
    config = model_server_config_pb2.ModelServerConfig()
    model = config.model_config_list.config.add(
        name=name, base_path=os.path.abspath(base_path), model_platform="tensorflow"
    )
    policy_proto = model.model_version_policy
    if policy == "latest":
        if num_latest < 1:
            raise ValueError(f"version policy latest needs at least 1 version, got {num_latest}")
        policy_proto.latest.num_versions = num_latest
    elif policy == "all":
        policy_proto.all.SetInParent()
    elif policy == "specific":
        if not versions:
            raise ValueError("version policy specific needs at least one version (--versions 1 2)")
        policy_proto.specific.versions.extend(versions)
    else:
        raise ValueError(f"unknown version policy {policy!r}; choose one of: {', '.join(POLICIES)}")
    for label, version in (labels or {}).items():
        model.version_labels[label] = version
    return config


def read_text_proto(path: str, message, what: str):
    """Fills `message` from a text proto file; ValueError naming `what` when unreadable or malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            text_format.Parse(f.read(), message)
    except OSError as error:
        raise ValueError(f"cannot read {what} {path}: {error.strerror}") from error
    except text_format.ParseError as error:
        raise ValueError(f"{what} {path} is not a {type(message).__name__} text proto: {error}") from error
    return message


def read(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Parses a --model_config_file; relative base paths are taken from the file's folder."""
    config = read_text_proto(path, model_server_config_pb2.ModelServerConfig(), "model config")
    models = config.model_config_list.config
    if not models:
        raise ValueError(f"model config {path} lists no model (model_config_list {{ config {{ ... }} }})")
    for model in models:
        if not model.name or not model.base_path:
            raise ValueError(f"model config {path}: every model needs a name and a base_path")
        if model.HasField("logging_config"):
            check_logging(model.logging_config, model.name)
        model.base_path = os.path.join(os.path.dirname(os.path.abspath(path)), model.base_path)
    return config


def check_logging(logging_config: logging_config_pb2.LoggingConfig, model_name: str) -> None:
    """ValueError (one line) when a model's logging_config is one this collector cannot honour."""
    collector = logging_config.log_collector_config
    where = f"model {model_name!r} logging_config"
    if collector.type not in COLLECTOR_TYPES:
        raise ValueError(
            f"{where}: no log collector of type {collector.type!r}; types: {', '.join(sorted(COLLECTOR_TYPES)[1:])}"
        )
    prefix = collector.filename_prefix
    if not prefix or prefix.endswith("/") or "://" in prefix:
        raise ValueError(
            f"{where}: filename_prefix {prefix!r} must be a local path ending in a name, e.g. "
            "/var/log/pneumonia/requests (ship closed files to a bucket from there: docs/serving/operations.md)"
        )
    if not 0.0 <= logging_config.sampling_config.sampling_rate <= 1.0:
        raise ValueError(f"{where}: sampling_rate {logging_config.sampling_config.sampling_rate} is not in [0, 1]")


def read_monitoring(path: str) -> Optional[str]:
    """The path a --monitoring_config_file serves Prometheus metrics at (TF Serving's default when it names
    none), or None when its prometheus_config is not enabled."""
    prometheus = read_text_proto(path, MonitoringConfig(), "monitoring config").prometheus_config
    if not prometheus.enable:
        return None
    if prometheus.path and not prometheus.path.startswith("/"):
        raise ValueError(f"monitoring config {path}: prometheus_config path {prometheus.path!r} must start with /")
    return prometheus.path or metrics.DEFAULT_PATH


def write(config: model_server_config_pb2.ModelServerConfig, path: str) -> str:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text_format.MessageToString(config))
    return path


def wanted_versions(model: model_server_config_pb2.ModelConfig, available: Sequence[int]) -> List[int]:
    """The versions the policy asks to serve among those available (TF Serving's semantics), which are
    serving/repository.py's `servable_versions`."""
    policy = model.model_version_policy
    kind = policy.WhichOneof("policy_choice") or "latest"
    if kind == "all":
        return sorted(available)
    if kind == "specific":
        return sorted(set(available) & set(policy.specific.versions))
    count = policy.latest.num_versions or 1
    return sorted(available)[-count:]
