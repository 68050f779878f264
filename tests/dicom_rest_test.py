"""POST /v1/dicom:to_png, the REST server's DICOM conversion for the web page: the module's own PNG back,
refusals as 400 with their one line, the body limit and the decode budget as 413.

The route needs no model, so the server here serves an empty model folder; the page's test
(tests/web_page_test.py) checks that the returned PNG gets the gRPC answer.
"""

import base64
import glob
import http.client
import json
import os

import numpy as np
import pytest

from fixtures import dicom_files as make
from serving import config, dicom
from serving.pixels import PixelBudget
from serving.rest import DICOM_PATH
from tests.serving_fixtures import MODEL_NAME, start_server

BODY_LIMIT = 200_000  # bytes; a 224 px 8-bit film is about 51 KB as DICOM


@pytest.fixture(scope="module")
def pixels(shared_data):
    return make.xray_pixels(sorted(glob.glob(os.path.join(shared_data, "chest_xray", "test", "NORMAL", "*.jpeg")))[0])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    empty = tmp_path_factory.mktemp("models")
    started = start_server(config.model_config(MODEL_NAME, str(empty)), max_message_bytes=BODY_LIMIT)
    yield started
    started.stop(grace_seconds=1)


def post(server, body: bytes, path: str = DICOM_PATH, method: str = "POST"):
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    connection.request(method, path, body=body, headers={"Content-Type": "application/dicom"})
    response = connection.getresponse()
    result = response.status, json.loads(response.read())
    connection.close()
    return result


def test_a_monochrome1_film_comes_back_as_the_modules_png(server, pixels):
    data = make.to_bytes(make.monochrome1(pixels, **make.IDENTITY_WINDOW))
    status, answer = post(server, data)
    assert status == 200
    assert base64.b64decode(answer["png"]["b64"]) == dicom.dicom_to_png(data)
    assert (answer["view_position"], answer["windowing"]) == ("PA", "window")
    assert set(answer) == {"png", "view_position", "windowing"}  # no identifier leaves the server

    lateral = make.to_bytes(make.xray_dicom(pixels, ViewPosition="LL"))
    status, answer = post(server, lateral, f"{DICOM_PATH}?allow_lateral=true")
    assert status == 200 and answer["view_position"] == "LATERAL" and answer["windowing"] == "percentile"


@pytest.mark.parametrize(
    "build, reason",
    [
        (make.ct_slice, "modality CT is not a radiograph (CR, DX, DR)"),
        (
            lambda p: make.xray_dicom(p, ViewPosition="LL"),
            "lateral view (LL): the model reads frontal films (--allow-lateral to score it anyway)",
        ),
        (make.without_pixels, "no PixelData (not an image)"),
    ],
)
def test_refusals_are_400_with_the_one_line_reason(server, pixels, build, reason):
    assert post(server, make.to_bytes(build(pixels))) == (400, {"error": reason})


def test_bad_requests_and_limits(server, pixels, tmp_path):
    assert post(server, b"\xff\xd8\xff\xe0 a JPEG") == (
        400,
        {"error": "not a DICOM file (no 'DICM' after the 128-byte preamble)"},
    )
    assert post(server, b"")[0] == 400
    assert post(server, b"", method="GET")[0] == 501
    big = make.to_bytes(make.xray_dicom(np.tile(pixels, (3, 3))))  # 672 px: 450 KB
    status, answer = post(server, big)
    assert status == 413 and answer["error"] == (
        f"request body of {len(big)} bytes exceeds the limit of {BODY_LIMIT} bytes"
    )
    assert post(server, make.to_bytes(make.xray_dicom(pixels)))[0] == 200  # the server goes on after a 413

    tight = start_server(config.model_config(MODEL_NAME, str(tmp_path)), budget=PixelBudget(max_pixels=10_000))
    try:
        status, answer = post(tight, make.to_bytes(make.xray_dicom(pixels)))
        assert status == 413 and "more than this server decodes at once" in answer["error"]
    finally:
        tight.stop(grace_seconds=1)
