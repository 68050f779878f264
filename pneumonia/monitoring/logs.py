"""The request logs as one table: a row per logged image, in the order the requests were answered.

Only closed files (`*.tfrecord`) are read: a file still open for writing (`*.tfrecord.tmp`) is counted, not
read. Any file that cannot be read whole, or that logs another model, fails the whole read with one line
naming it: a partial table would be a wrong answer, not a smaller one.
"""

import os
from typing import Dict, List

import numpy as np
import pandas as pd
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import prediction_log_pb2

from serving import image_stats, request_log, tensors
from serving.pixels import request_images

OUTPUTS = ("probability", "label", "threshold", "in_distribution")


class MonitorError(Exception):
    """A bad input or request; the message is one line."""


def log_files(location: str) -> List[str]:
    """The closed log files of a filename prefix (as in the logging_config) or of a folder, oldest first."""
    folder = tf.io.gfile.isdir(location)
    files = sorted(tf.io.gfile.glob(os.path.join(location, f"*{request_log.SUFFIX}"))) if folder else []
    files = files or request_log.log_files(location)
    if not files:
        raise MonitorError(
            f"no request log files at {location}: pass the logging_config's filename_prefix (its files are "
            f"PREFIX.*{request_log.SUFFIX}) or their folder"
        )
    return files


def open_files(location: str) -> int:
    """How many files under the location are still being written (not read)."""
    pattern = f"*{request_log.OPEN_SUFFIX}"
    if tf.io.gfile.isdir(location):
        return len(tf.io.gfile.glob(os.path.join(location, pattern)))
    return len(tf.io.gfile.glob(f"{location}.{pattern}"))


def _output(outputs, key: str, count: int) -> np.ndarray:
    if key not in outputs:
        return np.full(count, np.nan)
    value = tensors.to_array(key, outputs[key]).reshape(-1)
    return np.array([item.decode() for item in value], dtype=object) if value.dtype.kind == "O" else value


def _rows(log: prediction_log_pb2.PredictionLog, request: int) -> List[Dict[str, object]]:
    """One row per image of a logged request: when and where it came from, its statistics, the model's answer."""
    spec, inputs = log.log_metadata.model_spec, log.predict_log.request.inputs
    examples = [
        image_stats.from_example(tf.train.Example.FromString(serialized))
        for serialized in inputs[request_log.STATISTICS_INPUT].string_val
    ]
    images = request_images(
        {key: tensors.to_array(key, proto) for key, proto in inputs.items() if key != request_log.STATISTICS_INPUT}
    )
    answers = {key: _output(log.predict_log.response.outputs, key, len(examples)) for key in OUTPUTS}
    return [
        {
            "time": log.log_metadata.timestamp_secs,
            "origin": log.log_metadata.request_origin,
            "model": spec.name,
            "version": spec.version.value,
            "signature": spec.signature_name,
            "request": request,
            **example,
            **{key: value[index] for key, value in answers.items()},
            "image": images[index] if len(images) == len(examples) else None,
        }
        for index, example in enumerate(examples)
    ]


def read_logs(location: str, model_name: str) -> pd.DataFrame:
    """Every logged image of `model_name` under the location, ordered by answer time (then as written)."""
    rows: List[Dict[str, object]] = []
    requests = 0
    for path in log_files(location):
        try:
            for number, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator(), 1):
                log = prediction_log_pb2.PredictionLog.FromString(record)
                if log.WhichOneof("log_type") != "predict_log":
                    raise MonitorError(f"{path} record {number} is not a predict_log: not a request log of this model")
                if log.log_metadata.model_spec.name != model_name:
                    raise MonitorError(
                        f"{path} logs model {log.log_metadata.model_spec.name!r}, not {model_name!r}: point --logs at "
                        f"{model_name}'s filename_prefix, or pass --model-name"
                    )
                rows.extend(_rows(log, requests))
                requests += 1
        except tf.errors.OpError as error:
            raise MonitorError(f"{path} is truncated or not a TFRecord file: {error.message.splitlines()[0]}")
        except DecodeError:
            raise MonitorError(f"{path} holds a record that is not a PredictionLog")
    if not rows:
        raise MonitorError(f"the request logs at {location} hold no logged image")
    return pd.DataFrame(rows).sort_values(["time", "request"], kind="stable").reset_index(drop=True)
