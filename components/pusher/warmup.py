"""Warm-up requests shipped with every pushed version, for TF Serving to replay when it loads it.

TF Serving reads `assets.extra/tf_serving_warmup_requests` (an uncompressed TFRecord of PredictionLog,
https://www.tensorflow.org/tfx/serving/saved_model_warmup) and runs each request before the version
serves, so the first real request does not pay for graph initialisation. One request per signature of
the SavedModel, built from its SignatureDef: encoded images for an `images` input, serialized
tf.Example (feature `image`) for a string input of examples; a classification signature gets a
Classify request. A signature whose inputs cannot be built refuses the push rather than ship a version
that would warm up only partly. The image is a synthetic 224x224 grayscale JPEG, the prepared data's
format and size (no patient image is shipped).
"""

import os
from typing import List

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import classification_pb2, predict_pb2, prediction_log_pb2

from serving.repository import SAVED_MODEL_FILE, WARMUP_FILE

IMAGE_INPUT = "images"
EXAMPLE_INPUTS = ("examples", "inputs")
EXAMPLE_IMAGE_FEATURE = "image"
CLASSIFY_METHOD = "tensorflow/serving/classify"
PREDICT_METHOD = "tensorflow/serving/predict"


def warmup_image() -> bytes:
    """A smooth synthetic X-ray-sized JPEG: decodes and resizes like a real one."""
    rows = np.linspace(0, 255, 224, dtype=np.float32)
    pixels = (rows[:, None] * 0.5 + rows[None, :] * 0.5).astype(np.uint8)[:, :, None]
    return tf.io.encode_jpeg(pixels).numpy()


def _example(image: bytes) -> tf.train.Example:
    return tf.train.Example(
        features=tf.train.Features(
            feature={EXAMPLE_IMAGE_FEATURE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
        )
    )


def _request_log(name: str, definition: meta_graph_pb2.SignatureDef, image: bytes) -> prediction_log_pb2.PredictionLog:
    if definition.method_name == CLASSIFY_METHOD:
        request = classification_pb2.ClassificationRequest()
        request.model_spec.signature_name = name
        request.input.example_list.examples.add().CopyFrom(_example(image))
        return prediction_log_pb2.PredictionLog(classify_log=prediction_log_pb2.ClassifyLog(request=request))
    if definition.method_name != PREDICT_METHOD:
        raise ValueError(f"signature {name!r}: no warm-up request for method {definition.method_name!r}")
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = name
    for key, info in definition.inputs.items():
        if info.dtype != tf.string.as_datatype_enum or key not in (IMAGE_INPUT, *EXAMPLE_INPUTS):
            raise ValueError(
                f"signature {name!r}: no warm-up value for input {key!r} ({tf.dtypes.as_dtype(info.dtype).name})"
            )
        value = image if key == IMAGE_INPUT else _example(image).SerializeToString()
        request.inputs[key].CopyFrom(tf.make_tensor_proto([value], dtype=tf.string))
    return prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))


def warmup_requests(model_dir: str) -> List[prediction_log_pb2.PredictionLog]:
    """One request per signature of the SavedModel in `model_dir`, in signature-name order."""
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(os.path.join(model_dir, SAVED_MODEL_FILE), "rb") as f:
        saved_model.ParseFromString(f.read())
    image = warmup_image()
    signatures = saved_model.meta_graphs[0].signature_def
    return [_request_log(name, signatures[name], image) for name in sorted(signatures) if not name.startswith("__")]


def write_warmup_requests(model_dir: str, version_dir: str) -> int:
    """Writes the requests for `model_dir`'s signatures to `version_dir`/assets.extra/; returns how many."""
    logs = warmup_requests(model_dir)
    tf.io.gfile.makedirs(os.path.join(version_dir, os.path.dirname(WARMUP_FILE)))
    with tf.io.TFRecordWriter(os.path.join(version_dir, WARMUP_FILE)) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return len(logs)
