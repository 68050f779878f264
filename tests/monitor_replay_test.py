"""Replay: a real `pneumonia serve` with request logging and metrics on, fed real Kermany test films and then real
adult films from the RSNA site; `pneumonia monitor` must raise drift alarms in the adult windows and none in the
Kermany ones, and the metrics page must carry TF Serving's names.

The served model is a tiny untrained CNN, so its scores say little: the drift is driven by the image statistics,
which differ between the sets for real (RSNA films use the whole grey range: intensity sd about 75 against
Kermany's 57, 99th percentile about 253 against 206; measured in pneumonia/monitoring/drift_schema.pbtxt).
"""

import base64
import csv
import glob
import json
import os
import urllib.request

import grpc
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import prediction_log_pb2

from pneumonia import cli
from serving import config, request_log
from tests.serving_fixtures import (
    MODEL_NAME,
    export_tiny_model,
    image_request,
    place_version,
    start_server,
    stub,
    xray_guard,
)

PER_SET = 32  # films per set, half NORMAL, half PNEUMONIA
WINDOW = 16
METRICS_PATH = "/monitoring/prometheus/metrics"


def films(shared_data: str, folder: str):
    """PER_SET films of `folder` with their label: the first PER_SET / 2 of each class, the classes alternating as
    in a clinic's traffic (a window of one class would differ from validation by its prevalence alone)."""
    classes = [
        [(path, label) for path in sorted(glob.glob(f"{shared_data}/{folder}/{label}/*.jpeg"))[: PER_SET // 2]]
        for label in ("NORMAL", "PNEUMONIA")
    ]
    return [film for pair in zip(*classes) for film in pair]


def write_reference_data(shared_data: str, data: str) -> None:
    """A prepared eval split of Kermany train films (the reference), as `pneumonia prepare` writes it."""
    os.makedirs(os.path.join(data, "eval"))
    files = sorted(glob.glob(f"{shared_data}/chest_xray/train/*/*.jpeg"))[5::80]
    with tf.io.TFRecordWriter(os.path.join(data, "eval", "data-00000-of-00001.tfrecord.gz"), "GZIP") as writer:
        for path in files:
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[open(path, "rb").read()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int("/PNEUMONIA/" in path)])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


@pytest.fixture(scope="module")
def replay(shared_data, tmp_path_factory):
    """Serves a tiny model with logging and metrics on, sends Kermany test films over gRPC, then RSNA films over
    REST, each with its own request id; returns (folders, label per id, the metrics page)."""
    root = tmp_path_factory.mktemp("replay")
    model = export_tiny_model(str(root / "model"), str(root / "work"), 3, lambda m: xray_guard(m, shared_data))
    base = root / "serving" / MODEL_NAME
    os.makedirs(base)
    place_version(str(base), 1, model)
    prefix = str(root / "logs" / "requests")
    config_file = root / "models.config"
    config_file.write_text(
        f'model_config_list {{ config {{ name: "{MODEL_NAME}" base_path: "{base}" model_platform: "tensorflow" '
        f'logging_config {{ log_collector_config {{ type: "tfrecord" filename_prefix: "{prefix}" }} '
        f"sampling_config {{ sampling_rate: 1.0 }} }} }} }}"
    )
    server = start_server(config.read(str(config_file)), metrics_path=METRICS_PATH)
    labels = {}
    try:
        for path, label in films(shared_data, "chest_xray/test"):
            request_id = f"kermany-{os.path.basename(path)}"
            stub(server).Predict(
                image_request([open(path, "rb").read()]), timeout=30, metadata=[("x-request-id", request_id)]
            )
            labels[request_id] = label
        for path, label in films(shared_data, "sites/rsna"):
            request_id = f"rsna-{os.path.basename(path)}"
            body = json.dumps({"signature_name": "predict_images", "instances": [{"b64": _b64(path)}]}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{server.rest_port}/v1/models/{MODEL_NAME}:predict",
                body,
                {"Content-Type": "application/json", "X-Request-Id": request_id},
            )
            urllib.request.urlopen(request, timeout=30).read()
            labels[request_id] = label
        with pytest.raises(grpc.RpcError):  # a refused request is counted with its status
            stub(server).Predict(image_request([b"not an image"]), timeout=30)
        page = urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}{METRICS_PATH}").read().decode()
    finally:
        server.stop(grace_seconds=1)
    data = str(root / "data")
    write_reference_data(shared_data, data)
    return {"root": root, "prefix": prefix, "serving": str(root / "serving"), "data": data}, labels, page


def _b64(path: str) -> str:
    return base64.b64encode(open(path, "rb").read()).decode("ascii")


def test_the_metrics_page_carries_tf_servings_names_and_the_models_outputs(replay):
    _, labels, page = replay
    families = {family.name: family for family in text_string_to_metric_families(page)}
    assert families[":tensorflow:serving:request_count"].type == "counter"
    counts = {
        sample.labels["status"]: sample.value
        for sample in families[":tensorflow:serving:request_count"].samples
        if sample.labels["model_name"] == MODEL_NAME
    }
    assert counts["OK"] >= len(labels) and counts["INVALID_ARGUMENT"] >= 1
    latency = families[":tensorflow:serving:request_latency"]
    assert latency.type == "histogram"
    # The registry is the process's: other tests' servers may have added other APIs; these two must be there.
    apis = {(s.labels["entrypoint"], s.labels["API"]) for s in latency.samples if s.name.endswith("_count")}
    assert {("GRPC", "Predict"), ("REST", "predict")} <= apis
    assert families[":tensorflow:serving:model_warmup_latency"].type == "histogram"
    predicted = families[":pneumonia:serving:prediction_count"].samples
    assert sum(s.value for s in predicted if s.labels["model_version"] == "1") >= len(labels)
    assert {s.labels["signature_name"] for s in predicted} >= {"predict_images"}
    for name in (":pneumonia:serving:ood_flagged_count", ":pneumonia:serving:decode_budget_refusal_count"):
        assert families[name].type == "counter"
    assert families[":pneumonia:serving:probability"].type == "histogram"
    assert families[":pneumonia:serving:decode_budget_wait"].type == "histogram"


def test_the_logs_are_prediction_logs_with_statistics_and_no_image(replay):
    paths, labels, _ = replay
    files = request_log.log_files(paths["prefix"])
    records = [
        prediction_log_pb2.PredictionLog.FromString(record)
        for path in files
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator()
    ]
    assert len(records) == len(labels) and not glob.glob(paths["prefix"] + "*.tmp")
    origins = {record.log_metadata.request_origin for record in records}
    assert origins == {"GRPC", "REST"}
    for record in records:
        assert record.log_metadata.model_spec.name == MODEL_NAME and record.log_metadata.timestamp_secs > 0
        request = record.predict_log.request
        assert list(request.inputs) == [request_log.STATISTICS_INPUT]  # the image itself is not logged
        example = tf.train.Example.FromString(request.inputs[request_log.STATISTICS_INPUT].string_val[0])
        assert example.features.feature["request_id"].bytes_list.value[0].decode() in labels
        assert example.features.feature["width"].float_list.value[0] == 224
        assert {"probability", "label", "threshold", "in_distribution"} <= set(record.predict_log.response.outputs)


def monitor(paths, reference, out, *extra) -> int:
    """`pneumonia monitor` on the replay's logs in windows of WINDOW requests; its exit code."""
    with pytest.raises(SystemExit) as exit_code:
        cli.main(
            ["monitor", "--logs", paths["prefix"], "--reference", reference, "--serving-dir", paths["serving"]]
            + ["--window", str(WINDOW), "--out", str(out), *extra]
        )
    return exit_code.value.code


def test_the_monitor_raises_drift_in_the_adult_windows_only(replay, tmp_path, capsys):
    paths, labels, _ = replay
    label_file = tmp_path / "labels.csv"
    with open(label_file, "w", newline="") as f:
        csv.writer(f).writerows([("id", "label"), *labels.items()])
    saved = str(tmp_path / "reference.json")
    assert monitor(paths, paths["data"], tmp_path / "out", "--labels", str(label_file), "--save-reference", saved) == 3
    printed = capsys.readouterr().out
    alerts = [json.loads(line) for line in open(tmp_path / "out" / "alerts.jsonl")]
    drift = {a["window"] for a in alerts if a["kind"] in ("image_drift", "score_drift")}
    assert drift == {"requests 33-48", "requests 49-64"}, printed
    assert not [a for a in alerts if a["window"] in ("requests 1-16", "requests 17-32")], printed
    windows = [json.loads(line) for line in open(tmp_path / "out" / "windows.jsonl")]
    assert [w["images"] for w in windows] == [WINDOW] * 4
    assert all(w["realised"]["images"] == WINDOW and w["estimated"] for w in windows)
    assert '<img src="data:image/png;base64,' in (tmp_path / "out" / "report.html").read_text()

    assert monitor(paths, saved, tmp_path / "again") == 3  # the saved reference: same alerts, no scoring
    assert open(tmp_path / "again" / "alerts.jsonl").read() == open(tmp_path / "out" / "alerts.jsonl").read()
