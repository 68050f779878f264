"""Fixtures shared by the serving tests: a tiny real exported model, a serving dir, a running server.

Import the fixtures a test module uses by name (`from tests.serving_fixtures import served`).
"""

import glob
import os
import shutil

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from serving import config
from serving.server import ModelServer

IMAGE_SIZE = 64
MODEL_NAME = "pneumonia"


def png(height: int = 40, width: int = 30, seed: int = 0) -> bytes:
    """A small synthetic grayscale PNG (the model decodes and resizes any size)."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 1), dtype=np.uint8)
    return tf.io.encode_png(pixels).numpy()


def xray_guard(model, shared_data: str, image_size: int = IMAGE_SIZE):
    """The OOD guard fitted as the Trainer does, on real train X-rays, with other train X-rays as validation."""
    from trainer import ood
    from trainer.preprocessing import decode_image

    files = sorted(glob.glob(f"{shared_data}/chest_xray/train/*/*.jpeg"))[::60]
    pixels = np.stack([decode_image(open(f, "rb").read(), image_size).numpy() for f in files])
    labels = np.array(["/PNEUMONIA/" in f for f in files], dtype=int)
    return ood.fit_model(model, [(pixels[::2], labels[::2])], [(pixels[1::2], labels[1::2])])[0]


def export_tiny_model(export_dir: str, work_dir: str, seed: int, fit_guard=None) -> str:
    """A tiny untrained CNN with threshold 0.5; its OOD guard from `fit_guard(model)`, else fitted on noise."""
    from trainer import models, ood, signatures
    from trainer.threshold import Threshold

    tf.keras.utils.set_random_seed(seed)
    settings = dict(models.REGISTRY["cnn"].tiny)
    model = models.build("cnn", IMAGE_SIZE, **settings)
    signatures.export(
        model,
        export_dir,
        IMAGE_SIZE,
        Threshold(0.5, "youden", 1.0, 1.0, 10),
        work_dir,
        "cnn",
        settings,
        guard=fit_guard(model) if fit_guard else ood.noise_guard(model, IMAGE_SIZE),
    )
    return export_dir


@pytest.fixture(scope="session")
def exported_models(tmp_path_factory):
    """Two tiny CNN SavedModels with different weights (so versions answer differently)."""
    root = tmp_path_factory.mktemp("exported")
    return [export_tiny_model(str(root / f"model{seed}"), str(root / f"work{seed}"), seed) for seed in (1, 2)]


def place_version(base: str, version: int, model_dir: str) -> str:
    """Puts a model at <base>/<version>/ the way the Pusher does: copy aside, then one rename."""
    staging = os.path.join(base, f".staging-{version}")
    shutil.copytree(model_dir, staging)
    os.rename(staging, os.path.join(base, str(version)))
    return os.path.join(base, str(version))


@pytest.fixture
def model_base(tmp_path, exported_models):
    """<serving_dir>/pneumonia/ holding version 1."""
    base = str(tmp_path / "serving" / MODEL_NAME)
    os.makedirs(base)
    place_version(base, 1, exported_models[0])
    return base


def start_server(model_config, **options) -> ModelServer:
    options = {"grpc_port": 0, "rest_port": 0, "poll_seconds": 0.1, **options}
    return ModelServer(model_config, **options).start()


@pytest.fixture
def served(model_base):
    """A running server (gRPC and REST on free ports) for <model_base>, latest policy."""
    server = start_server(config.model_config(MODEL_NAME, model_base, labels={"stable": 1}))
    yield server
    server.stop(grace_seconds=1)


def stub_at(address: str) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(address))


def stub(server: ModelServer) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return stub_at(f"127.0.0.1:{server.grpc_port}")


def image_request(
    values, signature: str = "predict_images", model: str = MODEL_NAME, key: str = "images"
) -> predict_pb2.PredictRequest:
    """A Predict request with a batch of strings (encoded images, or serialized examples with key='examples')."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs[key].CopyFrom(tf.make_tensor_proto(values, dtype=tf.string))
    return request
