"""The decoded-pixel budget: pixels read from headers (every format, tf.Examples), wait-or-refuse
admission, and the codes clients get over gRPC and REST."""

import base64
import struct
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from serving import config
from serving.pixels import PixelBudget, PixelBudgetExhausted, declared_pixels, request_pixels
from tests.prepare_test import encode, png_declaring
from tests.serving_fixtures import (
    MODEL_NAME,
    exported_models,
    image_request,
    model_base,
    png,  # noqa: F401
    start_server,
    stub,
)
from tests.serving_rest_test import rest


def headers_of_every_format():
    """(bytes, pixels a decoder allocates) for the formats TensorFlow's decoders read."""
    gray, rgba = Image.new("L", (301, 207), 90), Image.new("RGBA", (64, 33), (1, 2, 3, 4))
    frames = [Image.new("L", (40, 30), shade) for shade in (0, 80, 160)]
    top_down_bmp = bytearray(encode(gray, "BMP"))
    struct.pack_into("<i", top_down_bmp, 22, -207)
    exif = Image.Exif()
    exif[0x010F] = "scanner"
    return [
        (encode(gray, "JPEG"), 301 * 207),
        (encode(gray, "JPEG", progressive=True), 301 * 207),
        (encode(gray, "JPEG", exif=exif.tobytes(), icc_profile=b"\0" * 3000), 301 * 207),  # segments before SOF
        (encode(gray, "PNG"), 301 * 207),
        (encode(rgba, "PNG"), 64 * 33),
        (encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), 3 * 40 * 30),
        (encode(gray, "BMP"), 301 * 207),
        (bytes(top_down_bmp), 301 * 207),
    ]


def test_declared_pixels_come_from_the_header_of_every_format():
    for data, pixels in headers_of_every_format():
        assert declared_pixels(data) == pixels, data[:8]
    decoded = tf.io.decode_image(headers_of_every_format()[0][0], channels=1)
    assert int(np.prod(decoded.shape[:2])) == 301 * 207
    for bad in (b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF89a", b"not an image", b"\xff\xd8\xff\xe0\x00"):
        assert declared_pixels(bad) == 0, bad
    assert declared_pixels(b"GIF89a\x10\x00\x10\x00") == 256  # the size fields, without the rest of the header
    jpeg = headers_of_every_format()[0][0]
    padded = jpeg[:2] + b"\xff\xfe\x00\x02" * 5000 + b"\xff" * 5000 + jpeg[2:]  # 10,000 markers before the frame
    started = time.monotonic()
    assert declared_pixels(padded) == 301 * 207 and time.monotonic() - started < 1


def test_request_pixels_count_raw_images_and_images_inside_examples():
    bomb = png_declaring(20_000, 20_000, png(10, 10))
    example = tf.train.Example(
        features=tf.train.Features(feature={"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[bomb]))})
    ).SerializeToString()
    assert request_pixels({"images": np.array([png(40, 30), bomb], dtype=object)}) == 1200 + 400_000_000
    assert request_pixels({"examples": np.array([example, b"\x00garbage"], dtype=object)}) == 400_000_000
    assert request_pixels({"scores": np.zeros(3, np.float32)}) == 0


def test_budget_refuses_what_never_fits_and_serves_the_rest_first_come_first_served():
    budget = PixelBudget(max_pixels=100, max_wait_seconds=5)
    with pytest.raises(PixelBudgetExhausted, match="more than this server decodes at once"):
        with budget.reserve(101):
            pass
    order, started = [], []

    def request(name: str, pixels: int):
        started.append(name)
        with budget.reserve(pixels):
            order.append(name)

    with budget.reserve(80):
        with budget.reserve(0):  # bytes that declare nothing never wait
            pass
        waiting = [threading.Thread(target=request, args=("big", 60))]
        waiting[0].start()
        while budget.waiting < 1:
            time.sleep(0.01)
        waiting.append(threading.Thread(target=request, args=("small", 10)))  # fits now, but is second in line
        waiting[1].start()
        while budget.waiting < 2:
            time.sleep(0.01)
        assert order == [] and budget.in_flight == 80
    for thread in waiting:
        thread.join(10)
    assert order == ["big", "small"] and budget.in_flight == 0


def test_a_request_that_waits_past_its_limit_is_refused():
    budget = PixelBudget(max_pixels=100, max_wait_seconds=0.2)
    with budget.reserve(100):
        started = time.monotonic()
        with pytest.raises(PixelBudgetExhausted, match="waited 0.2 s"):
            with budget.reserve(1):
                pass
        with pytest.raises(PixelBudgetExhausted, match="waited 0.05 s"):
            with budget.reserve(1, wait_seconds=0.05):  # a gRPC deadline shorter than the server's limit
                pass
    assert time.monotonic() - started < 2 and budget.in_flight == 0 and budget.waiting == 0


def test_server_answers_resource_exhausted_over_grpc_and_413_over_rest(model_base):
    server = start_server(
        config.model_config(MODEL_NAME, model_base), budget=PixelBudget(max_pixels=1_000_000, max_wait_seconds=0.3)
    )
    service, big = stub(server), png(800, 800)
    body = {"signature_name": "predict_images", "instances": [{"b64": base64.b64encode(big).decode()}] * 2}
    try:
        assert service.Predict(image_request([big]), timeout=30).model_spec.version.value == 1
        with pytest.raises(grpc.RpcError) as refused:
            service.Predict(image_request([big, big]), timeout=30)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "1.3 megapixels" in refused.value.details()
        status, answer = rest(server, "POST", f"/v1/models/{MODEL_NAME}:predict", body)
        assert status == 413 and "more than this server decodes at once" in answer["error"]
        with server.manager.budget.reserve(500_000):  # another request decoding: this one waits, then gives up
            with pytest.raises(grpc.RpcError) as busy:
                service.Predict(image_request([big]), timeout=30)
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry later" in busy.value.details()
        assert service.Predict(image_request([big]), timeout=30).model_spec.version.value == 1
    finally:
        server.stop(1)
