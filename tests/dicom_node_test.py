"""`pneumonia dicom-node` with pynetdicom's own SCU on loopback: statuses, the log, bad associations, restarts."""

import glob
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import portpicker
import pydicom
import pytest
import tensorflow as tf
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    SecondaryCaptureImageStorage,
)
from pynetdicom import AE
from tensorflow_serving.apis import prediction_log_pb2

from fixtures import dicom_files as make
from serving import config, dicom, request_log
from serving.client import ClientError, PredictionClient
from serving.dicom_node import DicomNode, NodeConfig
from tests.serving_fixtures import MODEL_NAME, exported_models, model_base, served, start_server  # noqa: F401

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def films(shared_data):
    paths = sorted(glob.glob(os.path.join(shared_data, "chest_xray", "test", "*", "*.jpeg")))[::97][:6]
    return [make.xray_pixels(path) for path in paths]


def start_node(tmp_path, server: str, **options) -> DicomNode:
    settings = {
        "port": 0,
        "server": server,
        "log_path": str(tmp_path / "node.jsonl"),
        "salt": "s",
        "retry_seconds": 5.0,
        **options,
    }
    return DicomNode(NodeConfig(**settings)).start()


def failed_calls(node: DicomNode) -> threading.Event:
    """Set once a call from the node to the model server has failed: a restart test waits for it instead of a
    fixed sleep, which a loaded machine can outlast before the node even calls."""
    event, predict = threading.Event(), node._client.predict

    def watched(*args, **kwargs):
        try:
            return predict(*args, **kwargs)
        except ClientError:
            event.set()
            raise

    node._client.predict = watched
    return event


def log_lines(node: DicomNode):
    with open(node.config.log_path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def send(port: int, datasets, ae_title: str = "TESTSCU"):
    """One association carrying `datasets`; the status code answered for each (None: no answer)."""
    scu = AE(ae_title=ae_title)
    for sop_class in (DigitalXRayImageStorageForPresentation, CTImageStorage):
        for syntax in (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1):
            scu.add_requested_context(sop_class, syntax)
    association = scu.associate("127.0.0.1", port, ae_title="PNEUMONIA")
    assert association.is_established
    try:
        return [int(status.Status) if status else None for status in map(association.send_c_store, datasets)]
    finally:
        association.release()


def test_many_images_over_several_associations_answered_and_logged(served, films, tmp_path):
    node = start_node(tmp_path, f"127.0.0.1:{served.grpc_port}", sr_dir=str(tmp_path / "sr"))
    try:
        good = [
            make.monochrome1(films[0]),
            make.twelve_bit(films[1]),
            make.jpeg_2000(films[2]),
            make.jpeg_lossless(films[3]),
            make.xray_dicom(films[4]),
            make.xray_dicom(films[5], ViewPosition="AP"),
        ]
        bad = {
            0x0122: make.ct_slice(films[0]),
            0xA900: make.without_pixels(films[1]),
            0xC000: make.xray_dicom(films[2], ViewPosition="LL"),
        }
        statuses = []
        for batch in (good[:3], good[3:] + [bad[0x0122]], [bad[0xA900], bad[0xC000]]):
            statuses += send(node.port, batch)
    finally:
        node.stop()
    assert statuses == [0x0000] * 6 + [0x0122, 0xA900, 0xC000]
    lines = log_lines(node)
    assert len(lines) == 9 and [line["status"] for line in lines] == [f"0x{s:04X}" for s in statuses]
    with PredictionClient(f"127.0.0.1:{served.grpc_port}") as client:
        expected = [client.predict([dicom.to_model_input(d).png])[0] for d in good]  # one per request, as sent
    for line, dataset, prediction in zip(lines, good, expected):
        assert line["outcome"] == "scored" and line["sop_instance"] == dicom.pseudonym(dataset.SOPInstanceUID, "s")
        assert (line["probability"], line["class"], line["threshold"], line["model_version"]) == (
            prediction.probability,
            prediction.label,
            prediction.threshold,
            prediction.model_version,
        )
        assert line["latency_ms"] > 0 and line["calling_ae"] == "TESTSCU"
        report = pydicom.dcmread(tmp_path / "sr" / line["sr"])
        referenced = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert referenced.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == dataset.SOPInstanceUID
        finding = report.ContentSequence[0].ConceptCodeSequence[0].CodeMeaning
        assert finding == ("Pneumonia" if prediction.label == "PNEUMONIA" else "Normal")
    assert [line["reason"] for line in lines[6:]] == [
        "SOP class CT Image Storage is not a CR or DX image",
        "no PixelData (not an image)",
        "lateral view (LL): the model reads frontal films (--allow-lateral to score it anyway)",
    ]
    text = open(node.config.log_path, encoding="utf-8").read()
    for dataset in good + list(bad.values()):
        assert all(value not in text for value in make.identifying_values(dataset))


NEW_UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "MediaStorageSOPInstanceUID")
# The identifying attributes of the Patient and General Study modules, which an image in the study must repeat.
STUDY_LINKS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyInstanceUID",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def test_secondary_captures_show_the_heatmap_over_the_film_in_its_study(served, films, tmp_path):
    node = start_node(tmp_path, f"127.0.0.1:{served.grpc_port}", sc_dir=str(tmp_path / "sc"))
    equipment = {"Manufacturer": "ACME", "StationName": "XRAY-ROOM-3", "DeviceSerialNumber": "SN-448812"}
    sent = [make.xray_dicom(films[0], **equipment), make.monochrome1(films[1]), make.twelve_bit(films[2])]
    try:
        assert send(node.port, sent) == [0x0000] * 3
    finally:
        node.stop()
    lines = log_lines(node)
    with PredictionClient(f"127.0.0.1:{served.grpc_port}") as client:
        for line, dataset in zip(lines, sent):
            png = dicom.to_model_input(dataset).png
            predicted, explained = client.predict([png])[0], client.explain([png])[0]
            # scored through explain_images, the logged result is predict_images' own
            assert explained.prediction == predicted
            assert (line["probability"], line["class"], line["threshold"]) == (
                predicted.probability,
                predicted.label,
                predicted.threshold,
            )
            written = (tmp_path / "sc" / line["sc"]).read_bytes()
            image = pydicom.dcmread(io.BytesIO(written))
            assert image.SOPClassUID == SecondaryCaptureImageStorage and list(image.ImageType)[0] == "DERIVED"
            assert image.StudyInstanceUID == dataset.StudyInstanceUID
            assert image.SourceImageSequence[0].ReferencedSOPInstanceUID == dataset.SOPInstanceUID
            film = np.asarray(Image.open(io.BytesIO(png)), dtype=np.int64)
            assert image.PhotometricInterpretation == "RGB" and image.pixel_array.shape == film.shape + (3,)
            heat = np.asarray(Image.fromarray(explained.gradcam, "F").resize(film.shape[::-1], Image.BILINEAR))
            above_caption = slice(0, film.shape[0] * 9 // 10)
            heat, pixels = heat[above_caption], image.pixel_array[above_caption].astype(np.int64)
            change = np.abs(pixels - film[above_caption, :, np.newaxis]).max(axis=-1)
            warm, cool = heat >= 0.6, heat < 0.35  # the ramp is red-yellow above 0.6, blue below 0.35
            assert warm.any() and cool.any()
            assert change[warm].mean() > 30 and change[warm].mean() > 1.5 * change[cool].mean()
            red_minus_blue = pixels[..., 0] - pixels[..., 2]  # 0 on the grey film
            assert red_minus_blue[warm].mean() > 20 and red_minus_blue[cool].mean() < -5
            for keyword in make.IDENTIFYING_KEYWORDS:  # what links it to the study is copied; nothing else
                for held in (image, image.file_meta):
                    if keyword in NEW_UIDS:
                        assert held.get(keyword) not in make.identifying_values(dataset)
                    elif keyword in STUDY_LINKS:
                        assert held.get(keyword) in (None, dataset.get(keyword))
                    else:
                        assert keyword not in held
            unlinked = Dataset()
            for keyword in set(make.IDENTIFYING_KEYWORDS) - set(STUDY_LINKS) - set(NEW_UIDS):
                if keyword in dataset:
                    unlinked[keyword] = dataset[keyword]
            assert not [value for value in make.identifying_values(unlinked) if value.encode() in written]
    text = open(node.config.log_path, encoding="utf-8").read()
    assert not [value for dataset in sent for value in make.identifying_values(dataset) if value in text]


def test_a_secondary_capture_that_cannot_be_written_keeps_the_result(served, films, tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    node = start_node(tmp_path, f"127.0.0.1:{served.grpc_port}", sc_dir=str(blocked))
    try:
        assert send(node.port, [make.xray_dicom(films[0])]) == [0x0000]
    finally:
        node.stop()
    [line] = log_lines(node)
    assert line["outcome"] == "scored" and line["class"] in ("NORMAL", "PNEUMONIA") and "sc" not in line
    assert line["sc_error"] == "FileExistsError: File exists"


def test_bad_associations_leave_the_node_serving(served, films, tmp_path):
    node = start_node(tmp_path, f"127.0.0.1:{served.grpc_port}")
    try:
        with socket.create_connection(("127.0.0.1", node.port)) as raw:  # not DICOM at all
            raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(range(256)) * 4)
            raw.settimeout(5)
            try:
                raw.recv(1024)
            except (socket.timeout, ConnectionError):
                pass
        scu = AE(ae_title="ABORTER")
        scu.add_requested_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
        aborted = scu.associate("127.0.0.1", node.port, ae_title="PNEUMONIA")
        assert aborted.is_established
        aborted.abort()  # the sender vanishes mid-association
        unknown = AE(ae_title="TESTSCU")
        unknown.add_requested_context("1.2.3.4.5.6.7.8.9")  # a private SOP class nobody supports
        refused = unknown.associate("127.0.0.1", node.port, ae_title="PNEUMONIA")
        assert not refused.is_established or not refused.accepted_contexts
        if refused.is_established:
            refused.release()
        assert send(node.port, [make.xray_dicom(films[0])]) == [0x0000]
    finally:
        node.stop()
    assert [line["outcome"] for line in log_lines(node)] == ["scored"]


def test_a_model_server_restart_is_retried_and_an_outage_answered_with_a_failure(model_base, films, tmp_path):
    port = portpicker.pick_unused_port()
    models = config.model_config(MODEL_NAME, model_base)
    server = start_server(models, grpc_port=port, rest_port=None)
    node = start_node(tmp_path, f"127.0.0.1:{port}", retry_seconds=30.0)
    try:
        assert send(node.port, [make.xray_dicom(films[0])]) == [0x0000]
        server.stop(grace_seconds=1)
        refused = failed_calls(node)
        answered = {}
        sender = threading.Thread(target=lambda: answered.update(statuses=send(node.port, [make.xray_dicom(films[1])])))
        sender.start()
        assert refused.wait(timeout=30), "the node never reached the stopped server"
        server = start_server(models, grpc_port=port, rest_port=None)  # while the node is retrying
        sender.join(timeout=60)
        assert answered["statuses"] == [0x0000]
        server.stop(grace_seconds=1)
        node.config.retry_seconds = 1.0
        assert send(node.port, [make.xray_dicom(films[2])]) == [0xA700]  # the PACS re-sends later
    finally:
        node.stop()
        server.stop(grace_seconds=1)
    lines = log_lines(node)
    assert [line["outcome"] for line in lines] == ["scored", "scored", "failed"]
    assert lines[1]["attempts"] > 1
    assert lines[2]["reason"].startswith("model server unavailable for 1 s: server 127.0.0.1:")


def test_command_listens_answers_and_stops_on_sigterm(served, films, tmp_path):
    log = tmp_path / "cli.jsonl"
    command = [
        sys.executable,
        "-m",
        "pneumonia.cli",
        "dicom-node",
        "--port",
        "0",
        "--server",
        f"127.0.0.1:{served.grpc_port}",
        "--log",
        str(log),
        "--ae-title",
        "PNEUMONIA",
        "--sc-dir",
        "sc",
    ]
    process = subprocess.Popen(
        command,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": REPO},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 90
        while not any("listening on" in line for line in lines):
            assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.1)
        port = int(next(line for line in lines if "listening on" in line).split("127.0.0.1:")[1].split(",")[0])
        echo = AE(ae_title="TESTSCU")
        echo.add_requested_context("1.2.840.10008.1.1")
        association = echo.associate("127.0.0.1", port, ae_title="PNEUMONIA")
        assert int(association.send_c_echo().Status) == 0
        association.release()
        sent = make.xray_dicom(films[0])
        assert send(port, [sent]) == [0x0000]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert "".join(lines).rstrip().endswith("stopped")
    assert not [value for value in make.identifying_values(sent) if value in "".join(lines) + log.read_text()]
    logged = json.loads(log.read_text())
    assert logged["outcome"] == "scored" and os.listdir(tmp_path / "sc") == [logged["sc"]]  # relative to the cwd


def test_wrong_ae_title_is_a_one_line_error(capsys):
    from pneumonia.cli import main

    with pytest.raises(SystemExit) as error:
        main(["dicom-node", "--ae-title", "A" * 17])
    assert str(error.value.code) == f"error: --ae-title {'A' * 17!r} must be 1 to 16 characters"


def test_scored_films_go_to_the_request_log_with_hashed_uids_only(served, films, tmp_path):
    prefix = str(tmp_path / "logs" / "requests")
    node = start_node(tmp_path, f"127.0.0.1:{served.grpc_port}", request_log_prefix=prefix)
    sent = [make.xray_dicom(films[0]), make.xray_dicom(films[1], ViewPosition="LL")]
    try:
        assert send(node.port, sent) == [0x0000, 0xC000]  # a refused film is not a scored one: not logged
    finally:
        node.stop()
    (path,) = request_log.log_files(prefix)
    raw = open(path, "rb").read()
    assert not [value for value in make.identifying_values(sent[0]) if value.encode() in raw]
    (log,) = [prediction_log_pb2.PredictionLog.FromString(r) for r in tf.data.TFRecordDataset(path).as_numpy_iterator()]
    assert log.log_metadata.request_origin == "DICOM" and log.log_metadata.model_spec.name == MODEL_NAME
    statistics = tf.train.Example.FromString(log.predict_log.request.inputs["image_statistics"].string_val[0])
    pseudonym = dicom.pseudonym(str(sent[0].SOPInstanceUID), "s")
    assert statistics.features.feature["request_id"].bytes_list.value == [pseudonym.encode()]
    assert list(log.predict_log.request.inputs) == ["image_statistics"]  # never the film
    line = log_lines(node)[0]
    assert line["sop_instance"] == pseudonym and log.log_metadata.model_spec.version.value == line["model_version"]
    probability = tf.make_ndarray(log.predict_log.response.outputs["probability"])
    assert probability.tolist() == pytest.approx([line["probability"]])
