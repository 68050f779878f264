"""TF Serving's gRPC contract (PredictionService, ModelService) over the official protos and grpcio.

The official `tensorflow_model_server` is the production server; it cannot be installed from the
package registries, so development and CI use this one. Clients cannot tell them apart: same
services, same model spec resolution, same status codes.
"""

import contextlib
import logging
import signal
import threading
import time
from concurrent import futures
from typing import Dict, Iterator, List, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tensorflow_serving.config import model_server_config_pb2

from serving import metrics, observer, request_log, tensors, tls, warmup
from serving.batching import Batcher, BatchingOptions
from serving.models import DEFAULT_SIGNATURE, LoadedVersion, ModelManager, ServingError, invalid, log_request
from serving.pixels import PixelBudget
from serving.rest import WEB_DIR, RestServer

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
log = logging.getLogger("serving.server")


def model_spec_target(spec: model_pb2.ModelSpec):
    """(name, version or None, label) of a ModelSpec (version and label are a oneof)."""
    return spec.name, (spec.version.value if spec.HasField("version") else None), spec.version_label


def _answer_spec(spec: model_pb2.ModelSpec, loaded: LoadedVersion, signature_name: str) -> None:
    spec.name = loaded.model_name
    spec.version.value = loaded.version
    spec.signature_name = signature_name


class _Call:
    """What a request resolved to, for its log line."""

    def __init__(self, model: str):
        self.model = model
        self.version: Optional[int] = None


@contextlib.contextmanager
def handled(method: str, model: str, context: grpc.ServicerContext) -> Iterator[_Call]:
    """Logs the request and turns a ServingError into the gRPC status it names."""
    started, call = time.monotonic(), _Call(model)
    code = grpc.StatusCode.OK
    try:
        yield call
    except ServingError as error:
        code = error.code
        context.abort(error.code, error.message)
    except Exception as error:
        code = grpc.StatusCode.INTERNAL
        context.abort(code, f"internal error: {error}")
    finally:
        log_request("grpc", method, model, call.version, started, code)


def predict(
    loaded: LoadedVersion, request: predict_pb2.PredictRequest, wait_seconds: Optional[float] = None
) -> predict_pb2.PredictResponse:
    """A Predict request on a resolved version (gRPC, and warm-up replay); `wait_seconds`: the deadline left."""
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    inputs = {key: tensors.to_array(key, proto) for key, proto in request.inputs.items()}
    outputs = loaded.run(signature_name, inputs, list(request.output_filter), wait_seconds)
    response = predict_pb2.PredictResponse()
    _answer_spec(response.model_spec, loaded, signature_name)
    for key, value in outputs.items():
        tensors.fill_proto(value, response.outputs[key])
    return response


def classify(
    loaded: LoadedVersion, request: classification_pb2.ClassificationRequest, wait_seconds: Optional[float] = None
) -> classification_pb2.ClassificationResponse:
    """tf.Example in, through a classification signature (TF Serving's rules, see classification_outputs);
    per example one class per column of `classes` / `scores`."""
    signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    wanted = classification_outputs(loaded, signature_name)
    examples = serialized_examples(request.input)
    outputs = loaded.run(signature_name, {tf.saved_model.CLASSIFY_INPUTS: examples}, wanted, wait_seconds)
    response = classification_pb2.ClassificationResponse()
    _answer_spec(response.model_spec, loaded, signature_name)
    fill_classifications(response.result, outputs, len(examples))
    return response


def replay_warmup(loaded: LoadedVersion) -> int:
    """TF Serving's warm-up: the version's recorded requests, each through the code that answers its kind."""
    with metrics.warmup_timer(loaded.path):
        return warmup.replay(loaded, {"predict_log": predict, "classify_log": classify})


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, seen: observer.Observer):
        self.manager = manager
        self.observer = seen

    def _resolve(self, spec: model_pb2.ModelSpec, call: _Call) -> LoadedVersion:
        loaded = self.manager.resolve(*model_spec_target(spec))
        call.version = loaded.version
        return loaded

    def Predict(self, request: predict_pb2.PredictRequest, context):
        with handled("Predict", request.model_spec.name, context) as call:
            loaded = self._resolve(request.model_spec, call)
            response = predict(loaded, request, context.time_remaining())
            self.observer.predicted_grpc(loaded, request, response, context)
            return response

    def Classify(self, request: classification_pb2.ClassificationRequest, context):
        with handled("Classify", request.model_spec.name, context) as call:
            return classify(self._resolve(request.model_spec, call), request, context.time_remaining())

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        with handled("GetModelMetadata", request.model_spec.name, context) as call:
            if list(request.metadata_field) != ["signature_def"]:
                raise invalid(f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}")
            loaded = self._resolve(request.model_spec, call)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            _answer_spec(response.model_spec, loaded, "")
            response.model_spec.ClearField("signature_name")
            signatures = get_model_metadata_pb2.SignatureDefMap()
            for name, definition in loaded.signature_defs.items():
                signatures.signature_def[name].CopyFrom(definition)
            response.metadata["signature_def"].Pack(signatures)
            return response


CLASSIFY_OUTPUTS = (tf.saved_model.CLASSIFY_OUTPUT_CLASSES, tf.saved_model.CLASSIFY_OUTPUT_SCORES)


def classification_outputs(loaded: LoadedVersion, signature_name: str) -> List[str]:
    """The outputs Classify reads, after TF Serving's checks of the signature (classifier.cc:
    GetClassificationSignatureDef, PreProcessClassification), with its status codes and messages."""
    definition = loaded.signature_defs.get(signature_name)
    if definition is None:
        raise invalid(f"No signature was found with the name: {signature_name}")
    if definition.method_name != tf.saved_model.CLASSIFY_METHOD_NAME:
        raise invalid(
            f"Expected classification signature method_name to be {tf.saved_model.CLASSIFY_METHOD_NAME}. "
            f"Was: {definition.method_name}"
        )
    if len(definition.inputs) != 1:
        raise invalid("Expected one input Tensor.")
    if len(definition.outputs) not in (1, 2):
        raise invalid(f"Expected one or two output Tensors, found {len(definition.outputs)}")
    if tf.saved_model.CLASSIFY_INPUTS not in definition.inputs:
        raise ServingError(
            grpc.StatusCode.FAILED_PRECONDITION, f"No classification inputs found in signature {signature_name!r}"
        )
    wanted = [name for name in CLASSIFY_OUTPUTS if name in definition.outputs]
    if not wanted:
        raise ServingError(
            grpc.StatusCode.FAILED_PRECONDITION,
            'Expected classification signature outputs to contain at least one of "classes" or "scores"',
        )
    return wanted


def fill_classifications(
    result: classification_pb2.ClassificationResult, outputs: Dict[str, np.ndarray], num_examples: int
) -> None:
    """TF Serving's PostProcessClassificationResult: [batch, classes] tensors, one Classifications per example."""
    expected = {tf.saved_model.CLASSIFY_OUTPUT_CLASSES: "O", tf.saved_model.CLASSIFY_OUTPUT_SCORES: "f"}
    for name, value in outputs.items():
        if value.ndim != 2:
            raise invalid(f"Expected Tensor shape: [batch_size num_classes] but got {list(value.shape)}")
        if value.dtype.kind != expected[name]:
            raise invalid(f"Expected {name} Tensor of {'DT_STRING' if expected[name] == 'O' else 'DT_FLOAT'}")
        if value.shape[0] != num_examples:
            raise invalid(f"Expected {name} output batch size of {num_examples}. Got: {value.shape[0]}")
    classes, scores = (outputs.get(name) for name in CLASSIFY_OUTPUTS)
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise ServingError(grpc.StatusCode.INTERNAL, "Tensors class and score should match in dim_size(1)")
    num_classes = next(value.shape[1] for value in outputs.values())
    for row in range(num_examples):
        classifications = result.classifications.add()
        for column in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                entry.label = classes[row, column].decode()
            if scores is not None:
                entry.score = float(scores[row, column])


def serialized_examples(model_input) -> np.ndarray:
    """The request's examples as serialized strings; with a context, its features join each example."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        examples = list(model_input.example_list.examples)
    elif kind == "example_list_with_context":
        listed = model_input.example_list_with_context
        examples = []
        for example in listed.examples:
            merged = tf.train.Example()
            merged.CopyFrom(listed.context)
            merged.MergeFrom(example)
            examples.append(merged)
    else:
        raise invalid("input holds no examples (set example_list or example_list_with_context)")
    if not examples:
        raise invalid("input holds an empty example list")
    return np.array([example.SerializeToString() for example in examples], dtype=object)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest, context):
        with handled("GetModelStatus", request.model_spec.name, context) as call:
            name, version, label = model_spec_target(request.model_spec)
            model = self.manager.model(name)
            if label:
                version = model.resolve(label=label).version
            call.version = version
            return get_model_status_pb2.GetModelStatusResponse(model_version_status=model.status(version))


class ModelServer:
    """The gRPC server (and optionally REST, with the web page at `/` unless `web_page` is off) over one
    ModelManager; ports 0 pick free ports.

    `budget` bounds the decoded pixels in flight across both protocols; with `ssl_config` (an SSLConfig,
    see serving.tls) gRPC serves only over TLS and REST only over HTTPS; with `batching`, concurrent
    Predict and Classify requests of both protocols are merged (serving/batching.py; `self.batcher`).
    `metrics_path`: REST also serves the Prometheus metrics there (serving/metrics.py); `log_rotation`: how
    request logs rotate (serving/request_log.py).
    """

    def __init__(
        self,
        server_config: model_server_config_pb2.ModelServerConfig,
        host: str = "127.0.0.1",
        grpc_port: int = 8500,
        rest_port: Optional[int] = 8501,
        poll_seconds: float = 1.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        workers: int = 8,
        max_queued: int = 64,
        budget: Optional[PixelBudget] = None,
        ssl_config=None,
        web_page: bool = True,
        config_file: Optional[str] = None,
        config_poll_seconds: float = 0.0,
        metrics_path: Optional[str] = None,
        log_rotation: request_log.Rotation = request_log.DEFAULT_ROTATION,
        batching: Optional[BatchingOptions] = None,
    ):
        """`config_file` and `config_poll_seconds` > 0: re-read the model config file when it changes."""
        self.batcher = Batcher(batching) if batching else None
        self.manager = ModelManager(
            server_config,
            poll_seconds,
            budget,
            warm_up=replay_warmup,
            config_file=config_file,
            config_poll_seconds=config_poll_seconds,
            batcher=self.batcher,
        )
        self.host = host
        self.observer = observer.Observer(self.manager, log_rotation)
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
            ],
            maximum_concurrent_rpcs=workers + max_queued,
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionService(self.manager, self.observer), self._grpc
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.manager), self._grpc)
        address = f"{host}:{grpc_port}"
        self.grpc_port = (
            self._grpc.add_secure_port(address, tls.grpc_server_credentials(ssl_config))
            if ssl_config
            else self._grpc.add_insecure_port(address)
        )
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {host}:{grpc_port} (in use?)")
        self.rest = None
        if rest_port is not None:
            self.rest = RestServer(
                self.manager,
                host,
                rest_port,
                max_message_bytes,
                workers,
                tls.rest_ssl_context(ssl_config) if ssl_config else None,
                WEB_DIR if web_page else None,
                observer=self.observer,
                metrics_path=metrics_path,
            )
        self.rest_port = self.rest.port if self.rest else None

    def start(self) -> "ModelServer":
        self.manager.start()
        self._grpc.start()
        if self.rest:
            self.rest.start()
        return self

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stops taking requests, lets in-flight ones finish (up to the grace period), stops polling, then
        ends the batch threads (after the poller: a version it is loading warms up through them)."""
        done = self._grpc.stop(grace_seconds)
        if self.rest:
            self.rest.stop()
        done.wait()
        self.manager.stop()
        if self.batcher:
            self.batcher.stop()
        self.observer.close()

    def serve_until_signalled(self, grace_seconds: float = 10.0) -> None:
        """Blocks until SIGTERM or SIGINT, then shuts down gracefully."""
        received = []
        stopping = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda number, _: (received.append(number), stopping.set()))
        stopping.wait()
        log.info("%s received: finishing in-flight requests, then stopping", signal.Signals(received[0]).name)
        self.stop(grace_seconds)
        log.info("stopped")
