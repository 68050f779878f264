"""What the server keeps of its answers: every prediction in the metrics, a sample of them in the request log.

Both protocols call `Observer.predicted` once a Predict has been answered (gRPC and REST alike; warm-up
replays are not requests and are not observed). The model's `logging_config` is read at each request, so a
model config file re-read by the server (--config-poll-seconds) turns logging on, off or to another rate
without a restart.

A client that wants to join labels to the log later sends its own request id (gRPC metadata `x-request-id`,
REST header `X-Request-Id`); otherwise the server makes one. A request with several images logs each as
`<id>/<index>`.
"""

import logging
import random
import re
import threading
import uuid
from typing import Dict, List, Mapping, Optional

import numpy as np
from tensorflow_serving.apis import model_pb2

from serving import metrics, request_log, tensors
from serving.config import COLLECTOR_TYPES
from serving.pixels import request_images

REQUEST_ID_HEADER = "x-request-id"
log = logging.getLogger("serving.observer")
VALID_ID = re.compile(r"[A-Za-z0-9._:@+=-]{1,128}")  # printable, no '/' (it separates the image index), bounded


def image_ids(request_id: Optional[str], count: int) -> List[str]:
    """The logged id of each image: the client's request id when it is a valid one, else a new one."""
    base = request_id if request_id and VALID_ID.fullmatch(request_id) else uuid.uuid4().hex
    return [base] if count == 1 else [f"{base}/{index}" for index in range(count)]


class Observer:
    """Metrics and request logs for the models of one ModelManager; `close()` flushes the open log files."""

    def __init__(self, manager, rotation: request_log.Rotation = request_log.DEFAULT_ROTATION):
        self._manager = manager
        self._rotation = rotation
        self._writers: Dict[str, request_log.RequestLogWriter] = {}  # by filename prefix
        self._lock = threading.Lock()

    def predicted(
        self,
        loaded,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray],
        origin: str,
        request_id: Optional[str] = None,
    ) -> None:
        """Records an answered Predict of `loaded` (a LoadedVersion): metrics always, the log when sampled. Never
        raises: the request has been answered, and a bookkeeping error must not turn it into a failure."""
        try:
            metrics.record_outputs(loaded.model_name, loaded.version, signature_name, outputs)
            self._log(loaded, signature_name, inputs, outputs, origin, request_id)
        except Exception:
            log.exception("could not record an answer of model %s in the metrics or the request log", loaded.model_name)

    def _log(self, loaded, signature_name, inputs, outputs, origin, request_id) -> None:
        served = self._manager.models.get(loaded.model_name)
        config = served.config.logging_config if served else None
        if config is None or not config.HasField("log_collector_config"):
            return
        rate = config.sampling_config.sampling_rate
        if rate <= 0 or random.random() >= rate:
            return
        images = request_images(inputs)
        with_images = COLLECTOR_TYPES[config.log_collector_config.type]
        spec = model_pb2.ModelSpec(name=loaded.model_name, signature_name=signature_name)
        spec.version.value = loaded.version
        self._writer(config.log_collector_config.filename_prefix).submit(
            request_log.Entry(
                spec,
                origin,
                image_ids(request_id, len(images)),
                images,
                dict(outputs),
                rate,
                dict(inputs) if with_images else None,
            )
        )

    def predicted_grpc(self, loaded, request, response, context) -> None:
        """`predicted` for a gRPC Predict, from its request and response protos and the call's metadata."""
        self.predicted(
            loaded,
            response.model_spec.signature_name,
            {key: tensors.to_array(key, proto) for key, proto in request.inputs.items()},
            {key: tensors.to_array(key, proto) for key, proto in response.outputs.items()},
            "GRPC",
            dict(context.invocation_metadata()).get(REQUEST_ID_HEADER),
        )

    def _writer(self, prefix: str) -> request_log.RequestLogWriter:
        with self._lock:
            if prefix not in self._writers:
                self._writers[prefix] = request_log.RequestLogWriter(prefix, self._rotation)
            return self._writers[prefix]

    def close(self) -> None:
        with self._lock:
            for writer in self._writers.values():
                writer.close()
            self._writers.clear()
