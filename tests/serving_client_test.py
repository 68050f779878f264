"""The client library and `pneumonia predict`: results, batching, retry, deadlines, one-line errors."""

import glob
import json
import threading
import time

import portpicker
import pytest
import tensorflow as tf

from pneumonia.cli import main
from serving import config
from serving.client import ClientError, PredictionClient, read_image
from tests.serving_fixtures import (
    MODEL_NAME,
    exported_models,
    image_request,
    model_base,
    png,
    served,  # noqa: F401
    start_server,
    stub,
)


def address(server) -> str:
    return f"127.0.0.1:{server.grpc_port}"


def test_client_returns_one_prediction_per_image_with_the_version(served):
    images = [png(seed=s) for s in range(5)]
    with PredictionClient(address(served)) as client:
        predictions = client.predict(images)
        pinned = client.predict(images[:1], version=1)
        labelled = client.predict(images[:1], label="stable")
        status = client.model_status()
    expected = tf.make_ndarray(stub(served).Predict(image_request(images), timeout=10).outputs["probability"])
    assert [p.probability for p in predictions] == pytest.approx(list(expected), abs=1e-6)
    assert {p.model_version for p in predictions + pinned + labelled} == {1}
    assert all(
        p.threshold == 0.5 and p.label == ("PNEUMONIA" if p.probability >= 0.5 else "NORMAL") for p in predictions
    )
    assert [s.version for s in status.model_version_status] == [1]


def test_predict_command_prints_text_and_json_for_real_images(served, shared_data, tmp_path, capsys):
    files = sorted(glob.glob(f"{shared_data}/chest_xray/test/*/*.jpeg"))[::200][:3]
    main(["predict", *files, "--server", address(served), "--batch-size", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == len(files)
    for line, path in zip(lines, files):
        assert line.startswith(f"{path}: ") and "threshold 0.5000, pneumonia version 1)" in line

    main(["predict", files[0], "--server", address(served), "--json", "--version", "1"])
    answer = json.loads(capsys.readouterr().out)
    assert answer["image"] == files[0] and answer["version"] == 1 and answer["model"] == MODEL_NAME
    assert answer["label"] in ("NORMAL", "PNEUMONIA") and 0 <= answer["probability"] <= 1


def one_line_error(argv) -> str:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    message = str(raised.value.code)
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_predict_command_errors_are_one_clear_line(served, tmp_path):
    image = tmp_path / "scan.png"
    image.write_bytes(png())
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    server = ["--server", address(served)]
    assert "notes.txt is not an image" in one_line_error(["predict", str(text), *server])
    assert "cannot read" in one_line_error(["predict", str(tmp_path / "missing.png"), *server])
    assert "unknown model 'other'" in one_line_error(["predict", str(image), *server, "--model-name", "other"])
    assert "version 4 is not loaded" in one_line_error(["predict", str(image), *server, "--version", "4"])
    down = f"127.0.0.1:{portpicker.pick_unused_port()}"
    assert f"server {down} is unavailable" in one_line_error(["predict", str(image), "--server", down])


def test_read_image_accepts_only_what_the_model_decodes(tmp_path):
    jpeg = tmp_path / "a.jpg"
    jpeg.write_bytes(tf.io.encode_jpeg(tf.zeros([4, 4, 1], tf.uint8)).numpy())
    assert read_image(str(jpeg)).startswith(b"\xff\xd8")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ClientError, match="is not an image"):
        read_image(str(empty))


def test_client_retries_while_the_server_starts(model_base):
    port = portpicker.pick_unused_port()
    result = {}

    def call():
        with PredictionClient(f"127.0.0.1:{port}", retries=6) as client:
            result["predictions"] = client.predict([png()])

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # the first attempt finds nothing listening
    server = start_server(config.model_config(MODEL_NAME, model_base), grpc_port=port, rest_port=None)
    try:
        caller.join(timeout=60)
    finally:
        server.stop(1)
    assert result["predictions"][0].model_version == 1


def test_deadline_is_reported(served):
    with PredictionClient(address(served), timeout_seconds=0.001) as client:
        with pytest.raises(ClientError, match="did not answer within 0.001 s"):
            client.predict([png(600, 600)] * 8)


def test_predict_puts_the_ood_flag_first():
    from serving.cli import prediction_line
    from serving.client import Prediction

    inside = Prediction(0.8, "PNEUMONIA", 0.5, 3, in_distribution=True, ood_score=2.0, ood_threshold=4.0)
    outside = Prediction(0.8, "PNEUMONIA", 0.5, 3, in_distribution=False, ood_score=9.5, ood_threshold=4.0)
    expected = "PNEUMONIA (probability 0.8000, threshold 0.5000, pneumonia version 3)"
    assert prediction_line(inside, "pneumonia") == expected
    assert prediction_line(outside, "pneumonia").startswith("OUT OF DISTRIBUTION (OOD score 9.50 > 4.00): ")
    assert prediction_line(outside, "pneumonia").endswith(expected)
