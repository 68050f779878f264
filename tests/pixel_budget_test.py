"""The model's pixel budget: the graph reads sizes from headers like the server and prepare do, refuses a
decompression bomb before decoding it (INVALID_ARGUMENT naming the size), and passes real full-size X-rays."""

import concurrent.futures
import glob
import os

import grpc
import numpy as np
import pytest
import tensorflow as tf

from serving.pixels import declared_size
from tests.prepare_test import png_declaring
from tests.serving_fixtures import exported_models, image_request, model_base, png, served, stub  # noqa: F401
from tests.serving_pixels_test import headers_of_every_format
from trainer import signatures
from trainer.pixel_budget import MAX_PIXELS, check_pixel_budget
from trainer.pixel_budget import declared_size as graph_declared_size

graph_size = tf.function(graph_declared_size, input_signature=[tf.TensorSpec([], tf.string)])
within_budget = tf.function(check_pixel_budget, input_signature=[tf.TensorSpec([], tf.string)])


def test_the_graph_reads_the_same_sizes_as_the_server_from_every_format():
    samples = [data for data, _ in headers_of_every_format()]
    samples += [b"", b"not an image", b"\x89PNG\r\n\x1a\n", b"GIF89a", png_declaring(20_000, 20_000, png())]
    for data in samples:
        assert tuple(graph_size(data).numpy()) == declared_size(data), data[:8]


def test_full_size_originals_pass_and_their_declared_size_is_their_decoded_size(shared_data):
    originals = sorted(glob.glob(os.path.join(shared_data, "originals", "*", "*")))
    assert len(originals) == 24
    for path in originals:
        data = open(path, "rb").read()
        within_budget(data)
        height, width = tf.io.decode_image(data, channels=1).shape[:2]
        assert tuple(graph_size(data).numpy()) == declared_size(data) == (width, height), path


def test_the_budget_is_recorded_in_the_model_metadata(exported_models):
    assert signatures.read_metadata(exported_models[0])["max_pixels"] == MAX_PIXELS


def test_a_decompression_bomb_is_refused_before_decoding_with_its_declared_size(served):
    """The issue's attack: 20,000 x 20,000 grayscale pixels in a small PNG, four at once."""
    bomb = png_declaring(20_000, 20_000, tf.io.encode_png(np.zeros((2000, 2000, 1), np.uint8)).numpy())
    edge = png_declaring(10_000, 10_001, png())  # one row over the budget
    service = stub(served)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        errors = list(pool.map(lambda image: _refusal(service, image), [bomb] * 4 + [edge]))
    assert all(code == grpc.StatusCode.INVALID_ARGUMENT for code, _ in errors)
    assert all("declared size 20000x20000 exceeds the pixel budget of 100 megapixels" in d for _, d in errors[:4])
    assert "declared size 10000x10001 exceeds" in errors[4][1]
    assert service.Predict(image_request([png()]), timeout=30).model_spec.version.value == 1


def _refusal(service, image: bytes):
    with pytest.raises(grpc.RpcError) as refused:
        service.Predict(image_request([image]), timeout=60)
    return refused.value.code(), refused.value.details()
