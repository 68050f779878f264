"""The server's watchers: request logs in TF Serving's PredictionLog format (sampling, images only when asked,
rotation, the disk bound, crash recovery), the MonitoringConfig and logging_config it accepts, the decode
budget's metrics, and what `--backend tfserving` passes on or refuses."""

import argparse
import os
import subprocess
import sys
import time
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import model_pb2, prediction_log_pb2

from serving import cli, config, metrics, request_log
from serving.pixels import PixelBudget
from tests.serving_fixtures import (
    MODEL_NAME,
    exported_models,  # noqa: F401 (fixtures)
    image_request,
    model_base,
    png,
    start_server,
    stub,
)


def entry(image_id: str = "a", image: bytes = b"") -> request_log.Entry:
    spec = model_pb2.ModelSpec(name=MODEL_NAME, signature_name="predict_images")
    spec.version.value = 1
    outputs = {"probability": np.array([0.25], np.float32), "label": np.array([b"NORMAL"], dtype=object)}
    return request_log.Entry(spec, "GRPC", [image_id], [image or png(seed=len(image_id))], outputs)


def read(path: str):
    return [prediction_log_pb2.PredictionLog.FromString(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]


def logging_config_file(tmp_path, base: str, collector: str = "tfrecord", rate: float = 1.0) -> str:
    path = tmp_path / "models.config"
    path.write_text(
        f'model_config_list {{ config {{ name: "{MODEL_NAME}" base_path: "{base}" model_platform: "tensorflow" '
        f'logging_config {{ log_collector_config {{ type: "{collector}" filename_prefix: "{tmp_path}/logs/req" }} '
        f"sampling_config {{ sampling_rate: {rate} }} }} }} }}"
    )
    return str(path)


def test_files_rotate_by_size_and_age_and_the_oldest_go_beyond_the_bound(tmp_path, caplog):
    prefix = str(tmp_path / "logs" / "req")
    one = len(request_log.prediction_log(entry()).SerializeToString()) + 16
    writer = request_log.RequestLogWriter(prefix, request_log.Rotation(2 * one, 3600, 5 * one))
    for number in range(12):
        writer.submit(entry(f"id{number:02d}"))
    writer.close()
    files = request_log.log_files(prefix)
    assert len(files) == 2 and not list((tmp_path / "logs").glob("*.tmp"))  # six closed, the four oldest deleted
    ids = [
        tf.train.Example.FromString(log.predict_log.request.inputs["image_statistics"].string_val[0])
        .features.feature["request_id"]
        .bytes_list.value[0]
        .decode()
        for path in files
        for log in read(path)
    ]
    assert ids == ["id08", "id09", "id10", "id11"]
    assert "deleted the 1 oldest closed file(s)" in caplog.text

    aging = request_log.RequestLogWriter(prefix + "-aging", request_log.Rotation(1 << 20, 0.3, 1 << 30))
    aging.submit(entry())
    deadline = time.monotonic() + 10
    while not request_log.log_files(prefix + "-aging") and time.monotonic() < deadline:
        time.sleep(0.05)  # no further request comes: the file closes for its age alone
    assert len(request_log.log_files(prefix + "-aging")) == 1
    aging.close()


def test_a_crash_loses_at_most_the_record_being_written(tmp_path):
    prefix = str(tmp_path / "req")
    records = [request_log.prediction_log(entry(f"id{n}")).SerializeToString() for n in range(3)]
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = f"{prefix}.20260101T000000Z.{request_log.HOST}.{int(dead.stdout)}-0123abcd.000001{request_log.OPEN_SUFFIX}"
    with tf.io.TFRecordWriter(left) as writer:
        for record in records:
            writer.write(record)
    with open(left, "ab") as f:
        f.write(open(left, "rb").read()[:30])  # the crash cut the fourth record short
    alive = f"{prefix}.20260101T000000Z.{request_log.HOST}.{os.getppid()}-0123abcd.000002{request_log.OPEN_SUFFIX}"
    open(alive, "wb").close()  # a running writer's open file is not touched

    request_log.RequestLogWriter(prefix).close()
    (recovered,) = request_log.log_files(prefix)
    assert recovered == left[: -len(".tmp")] and [log.SerializeToString() for log in read(recovered)] == records
    assert os.path.exists(alive)


@pytest.mark.parametrize(
    "logging, message",
    [
        ('log_collector_config { type: "kafka" filename_prefix: "/x/y" }', "no log collector of type 'kafka'"),
        ('log_collector_config { filename_prefix: "gs://b/y" }', "must be a local path ending in a name"),
        ('log_collector_config { filename_prefix: "/x/" }', "must be a local path ending in a name"),
        ('log_collector_config { filename_prefix: "/x/y" } sampling_config { sampling_rate: 2 }', "is not in"),
    ],
)
def test_a_logging_config_this_server_cannot_honour_is_refused_in_one_line(tmp_path, logging, message):
    path = tmp_path / "models.config"
    path.write_text(f'model_config_list {{ config {{ name: "m" base_path: "/m" logging_config {{ {logging} }} }} }}')
    with pytest.raises(ValueError, match=message) as error:
        config.read(str(path))
    assert "\n" not in str(error.value) and "model 'm' logging_config" in str(error.value)


def test_the_monitoring_config_is_read_as_tf_serving_reads_it(tmp_path):
    path = tmp_path / "monitoring.config"
    path.write_text("prometheus_config { enable: true }")
    assert config.read_monitoring(str(path)) == "/monitoring/prometheus/metrics"
    path.write_text('prometheus_config { enable: true path: "/metrics" }')
    assert config.read_monitoring(str(path)) == "/metrics"
    path.write_text('prometheus_config { path: "/metrics" }')
    assert config.read_monitoring(str(path)) is None  # not enabled: no page, as the official server
    path.write_text("prometheus_config { enabel: true }")
    with pytest.raises(ValueError, match="is not a MonitoringConfig text proto"):
        config.read_monitoring(str(path))


def test_images_are_logged_only_when_asked_and_a_batch_logs_each_image(tmp_path, model_base):
    server = start_server(config.read(logging_config_file(tmp_path, model_base, "tfrecord_with_images")))
    images = [png(seed=1), png(seed=2)]
    examples = [
        tf.train.Example(
            features=tf.train.Features(feature={"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[i]))})
        ).SerializeToString()
        for i in images
    ]
    try:
        stub(server).Predict(
            image_request(examples, "serving_default", key="examples"), timeout=30, metadata=[("x-request-id", "r1")]
        )
    finally:
        server.stop(grace_seconds=1)
    (log,) = read(request_log.log_files(str(tmp_path / "logs" / "req"))[0])
    request = log.predict_log.request
    assert list(request.inputs["examples"].string_val) == examples  # the request as sent, images included
    statistics = [tf.train.Example.FromString(s) for s in request.inputs["image_statistics"].string_val]
    assert [s.features.feature["request_id"].bytes_list.value[0] for s in statistics] == [b"r1/0", b"r1/1"]
    assert [s.features.feature["height"].float_list.value[0] for s in statistics] == [40, 40]
    assert log.log_metadata.model_spec.signature_name == "serving_default"
    assert list(log.predict_log.response.outputs["probability"].tensor_shape.dim)[0].size == 2


def test_a_sampling_rate_of_zero_logs_nothing_and_the_budget_counts_its_refusals(tmp_path, model_base):
    server = start_server(
        config.read(logging_config_file(tmp_path, model_base, rate=0.0)),
        budget=PixelBudget(max_pixels=100),
        metrics_path=metrics.DEFAULT_PATH,
    )
    try:
        with pytest.raises(grpc.RpcError) as refused:
            stub(server).Predict(image_request([png()]), timeout=30)
        page = urllib.request.urlopen(f"http://127.0.0.1:{server.rest_port}{metrics.DEFAULT_PATH}").read().decode()
    finally:
        server.stop(grace_seconds=1)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert request_log.log_files(str(tmp_path / "logs" / "req")) == []
    families = {family.name: family for family in text_string_to_metric_families(page)}
    refusals = [
        s
        for s in families[":pneumonia:serving:decode_budget_refusal_count"].samples
        if s.labels["model_name"] == MODEL_NAME and s.labels["reason"] == "too_large"
    ]
    assert refusals and refusals[0].value >= 1 and refusals[0].labels["signature_name"] == "predict_images"


def serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_tfserving_backend_gets_the_monitoring_config_and_refuses_request_logs(tmp_path, monkeypatch):
    monitoring = tmp_path / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true }")
    args = serve_args("--monitoring-config-file", str(monitoring), "--backend", "tfserving")
    assert f"--monitoring_config_file={monitoring}" in cli.tfserving_command(args, "models.config")
    with pytest.raises(SystemExit, match="set --rest-port"):
        cli.metrics_path(serve_args("--monitoring-config-file", str(monitoring), "--rest-port", "0"))
    monkeypatch.setattr(cli.shutil, "which", lambda _: "/usr/bin/tensorflow_model_server")
    logged = serve_args("--model-config-file", logging_config_file(tmp_path, "/m"), "--backend", "tfserving")
    with pytest.raises(SystemExit, match="writes no request logs in open source") as error:
        cli.cmd_serve(logged)
    assert "\n" not in str(error.value)
