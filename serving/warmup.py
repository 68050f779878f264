"""SavedModel warm-up as TF Serving does it: replay `assets.extra/tf_serving_warmup_requests` on load.

tensorflow/serving tensorflow_serving/servables/tensorflow/saved_model_warmup_util.cc
(`RunSavedModelWarmup`) and saved_model_warmup.cc (`RunWarmupRequest`): the file is an uncompressed
TFRecord of PredictionLog; no file means no warm-up; each record runs through the same code as a request
of its kind (Predict, Classify, ...), model spec ignored; any failing record, unparsable record, more
than 1000 records or a file that is not a TFRecord fails the version's load.
"""

import os
from typing import Any, Callable, List, Mapping

import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from serving.repository import WARMUP_FILE

MAX_RECORDS = 1000  # WarmupConsts::kMaxNumRecords

# log type -> what answers it: (loaded version, request) -> response
Handlers = Mapping[str, Callable[[Any, Any], Any]]


class WarmupError(ValueError):
    """The warm-up file cannot be replayed; the version must not become available."""


def read_records(model_dir: str) -> List[prediction_log_pb2.PredictionLog]:
    """The PredictionLogs of a version's warm-up file, or [] when it has none."""
    path = os.path.join(model_dir, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return []
    records = []
    try:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            log = prediction_log_pb2.PredictionLog()
            try:
                log.ParseFromString(record)
            except Exception:
                raise WarmupError(f"Failed to parse warmup record {len(records) + 1} from {path}")
            records.append(log)
            if len(records) > MAX_RECORDS:
                raise WarmupError(f"Number of warmup records exceeds the maximum ({MAX_RECORDS}) at {path}")
    except tf.errors.DataLossError as error:
        raise WarmupError(
            f"{error.message.splitlines()[0]} in {path}. Please verify your warmup data is in TFRecord format."
        )
    return records


def replay(loaded: Any, handlers: Handlers) -> int:
    """Runs every warm-up record of `loaded` (a LoadedVersion) through its handler; returns how many ran."""
    records = read_records(loaded.path)
    for number, log in enumerate(records, 1):
        kind = log.WhichOneof("log_type")
        if kind not in handlers:
            raise WarmupError(
                f"warmup record {number}: {kind or 'an empty log'} cannot be replayed: "
                f"this server answers {', '.join(sorted(handlers))} only"
            )
        handlers[kind](loaded, getattr(log, kind).request)
    return len(records)
