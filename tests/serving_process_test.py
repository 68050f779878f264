"""`pneumonia serve` as a process: structured request logs, graceful SIGTERM, and the official backend."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import portpicker
import pytest
import tensorflow as tf

from serving.cli import TF_SERVING_BINARY
from serving.client import PredictionClient
from tests.serving_fixtures import MODEL_NAME, exported_models, image_request, model_base, png, stub_at  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(model_base: str, *flags: str, ready: str = "serving gRPC on"):
    """`pneumonia serve` on free ports; returns the process, its gRPC address and its output lines so far."""
    grpc_port, rest_port = portpicker.pick_unused_port(), portpicker.pick_unused_port()
    command = [
        sys.executable,
        "-m",
        "pneumonia.cli",
        "serve",
        "--serving-dir",
        os.path.dirname(model_base),
        "--grpc-port",
        str(grpc_port),
        "--rest-port",
        str(rest_port),
        *flags,
    ]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    deadline = time.monotonic() + 60
    while not any(ready in line for line in lines):
        assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.1)
    return process, f"127.0.0.1:{grpc_port}", lines


def test_sigterm_finishes_the_request_in_flight_then_exits(model_base):
    process, server, lines = start(model_base)
    try:
        service = stub_at(server)
        service.Predict(image_request([png()]), timeout=30)  # connected, so the big request starts at once
        blank = tf.io.encode_png(np.zeros((1024, 1024, 1), np.uint8)).numpy()  # slow to decode, small to send
        answer = {}
        caller = threading.Thread(
            target=lambda: answer.update(response=service.Predict(image_request([blank] * 300), timeout=60))
        )
        caller.start()
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        caller.join(timeout=60)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert tf.make_ndarray(answer["response"].outputs["probability"]).shape == (300,)
    output = "".join(lines)
    requests = [json.loads(line.split("serving.requests ", 1)[1]) for line in lines if "serving.requests " in line]
    assert (
        requests[-1]
        == {**requests[-1], "protocol": "grpc", "method": "Predict", "model": MODEL_NAME, "version": 1, "status": "OK"}
        and requests[-1]["latency_ms"] > 0
    )
    assert output.index("SIGTERM received") < output.rindex('"method": "Predict"'), "the request ended before SIGTERM"
    assert output.rstrip().endswith("stopped")


def test_tfserving_backend_without_the_binary_says_what_to_do(model_base):
    if shutil.which(TF_SERVING_BINARY):
        pytest.skip(f"{TF_SERVING_BINARY} is on PATH; the official-backend test below covers it")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pneumonia.cli",
            "serve",
            "--serving-dir",
            os.path.dirname(model_base),
            "--backend",
            "tfserving",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"error: --backend tfserving needs {TF_SERVING_BINARY} on PATH" in result.stderr


@pytest.mark.skipif(
    shutil.which(TF_SERVING_BINARY) is None,
    reason=f"{TF_SERVING_BINARY} is not on PATH (not pip-installable; use the tensorflow/serving image)",
)
def test_client_contract_against_the_official_server(model_base):
    process, server, _ = start(model_base, "--backend", "tfserving", ready="Running gRPC ModelServer")
    try:
        with PredictionClient(server, retries=10) as client:
            predictions = client.predict([png(), png(seed=1)])
            status = client.model_status()
        assert [p.model_version for p in predictions] == [1, 1]
        assert [s.version for s in status.model_version_status] == [1]
        with pytest.raises(grpc.RpcError) as raised:
            stub_at(server).Predict(image_request([b"not an image"]), timeout=30)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
