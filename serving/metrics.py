"""Prometheus metrics of the server, under TF Serving's names wherever TF Serving measures the same thing.

TF Serving's exporter (tensorflow_serving/util/prometheus_exporter.cc) turns `/tensorflow/serving/request_count`
into `:tensorflow:serving:request_count` and writes a counter under its own name, where prometheus_client's
exposition would append `_total`; `page()` writes as TF Serving does, so dashboards and alerts written for the
official server read this one unchanged. What only this server knows, the model's answers and its decode budget,
follows the same naming under `:pneumonia:serving:`, labelled by TF Serving's ModelSpec fields.

The metrics are process-wide, as TF Serving's are. No TensorFlow here: serving/pixels.py records into them and
the CLI imports it at start-up.
"""

import contextlib
import time
from typing import Iterator, Mapping, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.utils import floatToGoString

DEFAULT_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# TF Serving's latency buckets, in microseconds: monitoring::Buckets::Exponential(10, 1.8, 33), printed to the
# six significant digits its exporter prints them with.
MICROSECOND_BUCKETS = tuple(float(f"{10 * 1.8**i:.6g}") for i in range(33))
PROBABILITY_BUCKETS = tuple(round(i / 20, 2) for i in range(1, 20))
MODEL_LABELS = ("model_name", "model_version", "signature_name")
GRPC_INFERENCE = ("Predict", "Classify", "Regress", "MultiInference")
LABEL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})  # the text format's escapes

REGISTRY = CollectorRegistry()
REQUEST_COUNT = Counter(
    ":tensorflow:serving:request_count", "The total number of requests.", ("model_name", "status"), registry=REGISTRY
)
REQUEST_LATENCY = Histogram(
    ":tensorflow:serving:request_latency",
    "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
    ("model_name", "API", "entrypoint"),
    buckets=MICROSECOND_BUCKETS,
    registry=REGISTRY,
)
WARMUP_LATENCY = Histogram(
    ":tensorflow:serving:model_warmup_latency",
    "Distribution of wall time (in microseconds) for warming up the model.",
    ("model_path", "status"),
    buckets=MICROSECOND_BUCKETS,
    registry=REGISTRY,
)
PREDICTIONS = Counter(
    ":pneumonia:serving:prediction_count",
    "Images answered, by the class at the model's threshold (output `label`).",
    MODEL_LABELS + ("class",),
    registry=REGISTRY,
)
OOD_FLAGGED = Counter(
    ":pneumonia:serving:ood_flagged_count",
    "Images the model's out-of-distribution guard flagged (output `in_distribution` false).",
    MODEL_LABELS,
    registry=REGISTRY,
)
PROBABILITY = Histogram(
    ":pneumonia:serving:probability",
    "Distribution of the pneumonia probability per image (output `probability`).",
    MODEL_LABELS,
    buckets=PROBABILITY_BUCKETS,
    registry=REGISTRY,
)
DECODE_WAIT = Histogram(
    ":pneumonia:serving:decode_budget_wait",
    "Distribution of wall time (in microseconds) requests waited for room in the decoded-pixel budget.",
    MODEL_LABELS,
    buckets=MICROSECOND_BUCKETS,
    registry=REGISTRY,
)
DECODE_REFUSED = Counter(
    ":pneumonia:serving:decode_budget_refusal_count",
    "Requests the decoded-pixel budget refused: too_large (over the whole budget) or timeout (no room in time).",
    MODEL_LABELS + ("reason",),
    registry=REGISTRY,
)
REQUEST_LOG = Counter(
    ":pneumonia:serving:request_log_count",
    "Requests sampled into the request log, by outcome: written, dropped (its queue was full) or failed.",
    ("model_name", "outcome"),
    registry=REGISTRY,
)


def record_request(protocol: str, method: str, model: str, seconds: float, status: str) -> None:
    """TF Serving's RecordModelRequestCount and, for answered requests only as there, RecordRequestLatency: every
    REST request naming a model (API: the POST's method, empty for a GET, as its http_server.cc), and the gRPC
    inference calls (its prediction_service_impl.cc does not count GetModelMetadata, nor ModelService calls)."""
    if not model or (protocol == "grpc" and method not in GRPC_INFERENCE):
        return
    REQUEST_COUNT.labels(model, status).inc()
    if status == "OK":
        verb, _, rest_api = method.partition(" ")  # REST methods are logged as "POST predict", "GET status"
        api = method if protocol == "grpc" else (rest_api if verb == "POST" else "")
        REQUEST_LATENCY.labels(model, api, protocol.upper()).observe(seconds * 1e6)


@contextlib.contextmanager
def warmup_timer(model_path: str) -> Iterator[None]:
    """Times a version's warm-up into `model_warmup_latency`, with status OK or the error's first line."""
    started, status = time.monotonic(), "OK"
    try:
        yield
    except Exception as error:
        status = (str(error) or type(error).__name__).splitlines()[0]
        raise
    finally:
        WARMUP_LATENCY.labels(model_path, status).observe((time.monotonic() - started) * 1e6)


def record_outputs(model: str, version: int, signature: str, outputs: Mapping[str, np.ndarray]) -> None:
    """Counts one answer's images by class and OOD flag and adds their probabilities, where the model has
    those outputs."""
    labels = (model, str(version), signature)
    if "label" in outputs:
        classes, counts = np.unique(np.asarray(outputs["label"]).reshape(-1), return_counts=True)
        for name, count in zip(classes, counts):
            PREDICTIONS.labels(*labels, name.decode() if isinstance(name, bytes) else str(name)).inc(int(count))
    if "in_distribution" in outputs:
        OOD_FLAGGED.labels(*labels).inc(int(np.sum(~np.asarray(outputs["in_distribution"], dtype=bool))))
    if "probability" in outputs:
        histogram = PROBABILITY.labels(*labels)
        for value in np.asarray(outputs["probability"], dtype=float).reshape(-1):
            histogram.observe(value)


def decode_waited(labels: Sequence[str], seconds: float) -> None:
    DECODE_WAIT.labels(*labels).observe(seconds * 1e6)


def decode_refused(labels: Sequence[str], reason: str) -> None:
    DECODE_REFUSED.labels(*labels, reason).inc()


def _labels(labels: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{name}="{value.translate(LABEL_ESCAPES)}"' for name, value in labels.items()) + "}"


def page() -> bytes:
    """The Prometheus text page, as TF Serving's exporter writes it (counters without `_total`, no `_created`)."""
    lines = []
    for family in REGISTRY.collect():
        lines.append(f"# HELP {family.name} {family.documentation}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            name = family.name if family.type == "counter" else sample.name
            lines.append(f"{name}{_labels(sample.labels) if sample.labels else ''} {floatToGoString(sample.value)}")
    return ("\n".join(lines) + "\n").encode("utf-8")
