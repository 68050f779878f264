"""`pneumonia monitor` on request logs written by the server's own writer: windows by time, the exit codes, the
estimates against known answers, the labelled export, the Pushgateway, and bad inputs refused in one line with
nothing written. The replay against a running server is tests/monitor_replay_test.py."""

import http.server
import io
import json
import os
import re
import threading

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from tensorflow_serving.apis import model_pb2

from components.report.plots import Scores, expected_calibration_error
from pneumonia import cli
from pneumonia.data import sources
from pneumonia.data.images import inspect_image
from pneumonia.monitoring import estimates, reference
from serving import image_stats, request_log
from tests.gcs_emulator import bucket, files_under, gcs  # noqa: F401 (fixtures)

HOUR = 3600
START = 1_800_000_000 // HOUR * HOUR  # on the hour


def film(rng: np.random.Generator) -> bytes:
    """A 64 x 64 grayscale PNG whose intensities are drawn like a film's (mean about 120, sd about 50)."""
    pixels = np.clip(rng.normal(120, 50, (64, 64)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def answers(rng: np.random.Generator, count: int):
    """(labels, probabilities): calibrated probabilities, so what CBPE expects is what the labels give."""
    probability = rng.beta(0.6, 0.6, count)
    return (rng.random(count) < probability).astype(int), probability


def write_logs(prefix: str, count: int, model: str = "pneumonia", with_images: bool = False, seed: int = 1):
    """`count` single-image requests over two hours; returns their ids and labels."""
    rng = np.random.default_rng(seed)
    labels, probability = answers(rng, count)
    writer = request_log.RequestLogWriter(prefix)
    for number in range(count):
        image = film(rng)
        spec = model_pb2.ModelSpec(name=model, signature_name="predict_images")
        spec.version.value = 1
        outputs = {
            "probability": np.array([probability[number]], np.float32),
            "label": np.array([b"PNEUMONIA" if probability[number] >= 0.5 else b"NORMAL"], dtype=object),
            "threshold": np.array([0.5], np.float32),
            "in_distribution": np.array([True]),
            "ood_score": np.array([rng.normal(10, 1)], np.float32),
        }
        writer.submit(
            request_log.Entry(
                spec,
                "REST",
                [f"r{number:03d}"],
                [image],
                outputs,
                inputs={"images": np.array([image], dtype=object)} if with_images else None,
                timestamp=START + number * 2 * HOUR // count,
            )
        )
    writer.close()
    return {f"r{n:03d}": int(label) for n, label in enumerate(labels)}


@pytest.fixture
def setup(tmp_path):
    """Two hours of logs like the reference, and the reference itself saved as --save-reference writes it."""
    rng = np.random.default_rng(0)
    labels, probability = answers(rng, 3000)  # enough for the ECE to measure calibration, not noise
    statistics = pd.DataFrame([image_stats.image_statistics(film(rng)) for _ in range(200)])
    statistics[image_stats.OOD_FEATURE] = rng.normal(10, 1, len(statistics))
    ref = reference.Reference("pneumonia", 1, 0.5, "sensitivity:0.5", "synthetic", probability, labels, statistics)
    (tmp_path / "reference.json").write_text(ref.to_json())
    prefix = str(tmp_path / "logs" / "requests")
    known = write_logs(prefix, 120, with_images=True)
    return tmp_path, prefix, known


def run(tmp_path, prefix, *extra) -> int:
    arguments = ["monitor", "--logs", prefix, "--reference", str(tmp_path / "reference.json"), *extra]
    with pytest.raises(SystemExit) as exit_code:
        cli.main(arguments)
    return exit_code.value.code


def write_labels(path, known) -> str:
    path.write_text("id,label\n" + "".join(f"{k},{'PNEUMONIA' if v else 'NORMAL'}\n" for k, v in known.items()))
    return str(path)


def test_hourly_windows_like_the_reference_raise_nothing_and_exit_0(setup, capsys):
    tmp_path, prefix, known = setup
    labels = write_labels(tmp_path / "labels.csv", known)
    assert run(tmp_path, prefix, "--window", "hour", "--labels", labels, "--out", str(tmp_path / "out")) == 0
    printed = capsys.readouterr().out
    assert "validation ECE" in printed and ": calibrated, the probabilities are used as served" in printed
    lines = [line for line in printed.splitlines() if line.startswith(("2027", "2026", "2028"))]
    assert len(lines) == 2 and all("60 images" in line for line in lines), printed
    assert (tmp_path / "out" / "alerts.jsonl").read_text() == ""
    assert sorted(os.listdir(tmp_path / "out")) == ["alerts.jsonl", "report.html", "windows.jsonl"]


def test_logs_labels_reference_and_outputs_in_a_bucket(setup, bucket):
    tmp_path, prefix, known = setup
    for path in request_log.log_files(prefix):
        tf.io.gfile.copy(path, f"{bucket}/logs/{os.path.basename(path)}")
    tf.io.gfile.copy(str(tmp_path / "reference.json"), f"{bucket}/reference.json")
    tf.io.gfile.copy(write_labels(tmp_path / "labels.csv", known), f"{bucket}/labels.csv")
    arguments = ["monitor", "--logs", f"{bucket}/logs/requests", "--reference", f"{bucket}/reference.json"]
    with pytest.raises(SystemExit) as exit_code:
        cli.main(arguments + ["--labels", f"{bucket}/labels.csv", "--window", "hour", "--out", f"{bucket}/out"])
    assert exit_code.value.code == 0
    assert [name for name in files_under(bucket) if name.startswith("out/")] == [
        "out/alerts.jsonl",
        "out/report.html",
        "out/windows.jsonl",
    ]


def test_cbpe_matches_the_labels_when_the_probabilities_are_calibrated():
    labels, probability = answers(np.random.default_rng(5), 4000)
    positive = probability >= 0.5
    expected = estimates.expected_performance(probability, positive)
    realised = estimates.realised_performance(labels, positive)
    assert abs(expected.sensitivity - realised.sensitivity) < 0.02
    assert abs(expected.specificity - realised.specificity) < 0.02
    estimate, lower, upper = estimates.prevalence(probability, 0.5)
    assert lower <= labels.mean() <= upper and abs(estimate - labels.mean()) < 0.03


def test_miscalibrated_probabilities_get_platt_scaling_from_validation():
    labels, probability = answers(np.random.default_rng(6), 1000)
    squeezed = 0.5 + (probability - 0.5) * 0.3  # overcautious: the curve is too flat
    ref = reference.Reference("m", 1, 0.5, "youden", "x", squeezed, labels, None)
    calibration = reference.calibration(ref)
    assert calibration.ece > 0.1 and calibration.platt is not None and calibration.ece_after < 0.05
    assert expected_calibration_error(Scores(labels, calibration.apply(squeezed))) < 0.05


def test_labelled_requests_are_exported_as_a_site_folder_prepare_takes(setup, capsys):
    tmp_path, prefix, known = setup
    labels = write_labels(tmp_path / "labels.csv", dict(list(known.items())[:30]))
    site = tmp_path / "site"
    run(tmp_path, prefix, "--window", "day", "--labels", labels, "--export-labelled", str(site))
    assert "30 labelled images exported" in capsys.readouterr().out
    files = [os.path.join(dirpath, name) for dirpath, _, names in os.walk(site) for name in names]
    assert len(files) == 30 and not [p for p in os.listdir(tmp_path) if ".partial" in p]
    source = sources.Source.parse(f"site={site}")
    for path in files:
        candidate, reason = sources.classify(source, os.path.relpath(path, site))
        assert reason is None and candidate.label == known[os.path.basename(path).split(".")[0]]
        inspect_image(open(path, "rb").read())


def test_the_last_window_is_pushed_to_a_pushgateway(setup):
    tmp_path, prefix, _ = setup
    received = []

    class Gateway(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            received.append((self.path, self.rfile.read(int(self.headers["Content-Length"])).decode()))
            self.send_response(202)
            self.end_headers()

        def log_message(self, *args):
            pass

    gateway = http.server.HTTPServer(("127.0.0.1", 0), Gateway)
    threading.Thread(target=gateway.serve_forever, daemon=True).start()
    try:
        run(tmp_path, prefix, "--window", "hour", "--pushgateway", f"http://127.0.0.1:{gateway.server_address[1]}")
    finally:
        gateway.shutdown()
    ((path, body),) = received
    assert path == "/metrics/job/pneumonia-monitor/model_name/pneumonia"
    names = {family.name for family in text_string_to_metric_families(body)}
    assert {":pneumonia:monitor:ood_share", ":pneumonia:monitor:estimated_sensitivity"} <= names
    assert ":pneumonia:monitor:sensitivity_floor" in names  # from the reference's policy, sensitivity:0.5


@pytest.mark.parametrize(
    "case, message",
    [
        ("truncated", r"\.tfrecord is truncated or not a TFRecord file"),
        ("other model", r"logs model 'other', not 'pneumonia'"),
        ("unknown labels", r"labels .*: 1 id\(s\) not in the request logs, e.g. nobody"),
        ("empty window", r"no logged request of pneumonia between 2031-01-01 and the last"),
        ("bad window", r"--window 'weekly': use hour, day or a number of requests"),
        ("other version", r"reference of pneumonia version 2, the logs were answered by pneumonia version 1"),
        ("no logs", r"no request log files at"),
    ],
)
def test_bad_inputs_are_one_line_and_write_nothing(setup, case, message):
    tmp_path, prefix, known = setup
    extra = []
    if case == "truncated":
        first = request_log.log_files(prefix)[0]
        with open(first, "r+b") as f:
            f.truncate(os.path.getsize(first) - 5)
    elif case == "other model":
        write_logs(str(tmp_path / "logs" / "requests-b"), 3, model="other")
    elif case == "unknown labels":
        extra = ["--labels", write_labels(tmp_path / "labels.csv", {**known, "nobody": 1})]
    elif case == "empty window":
        extra = ["--since", "2031-01-01"]
    elif case == "bad window":
        extra = ["--window", "weekly"]
    elif case == "other version":
        saved = json.loads((tmp_path / "reference.json").read_text())
        (tmp_path / "reference.json").write_text(json.dumps({**saved, "version": 2}))
    elif case == "no logs":
        prefix = str(tmp_path / "nothing" / "here")
    if case == "other model":
        prefix = str(tmp_path / "logs")  # the folder: both models' files
    error = str(
        run(tmp_path, prefix, "--out", str(tmp_path / "out"), "--export-labelled", str(tmp_path / "site"), *extra)
    )
    assert error.startswith("error: ") and "\n" not in error
    assert re.search(message, error), error
    assert not (tmp_path / "out").exists() and not (tmp_path / "site").exists()
