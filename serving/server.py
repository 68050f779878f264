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
from typing import Iterator, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, get_model_status_pb2,
                                     model_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc)
from tensorflow_serving.config import model_server_config_pb2

from serving.models import DEFAULT_SIGNATURE, LoadedVersion, ModelManager, ServingError, invalid, log_request

DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CLASS_NAMES = ("NORMAL", "PNEUMONIA")  # the model contract: `probability` is the PNEUMONIA score
log = logging.getLogger("serving.server")


def model_spec_target(spec: model_pb2.ModelSpec):
    """(name, version or None, label) of a ModelSpec (version and label are a oneof)."""
    return spec.name, (spec.version.value if spec.HasField("version") else None), spec.version_label


def tensor_to_array(key: str, proto) -> np.ndarray:
    if any(dim.size < 0 for dim in proto.tensor_shape.dim):
        raise invalid(f"input {key!r} is not a well-formed TensorProto: negative dimension in its shape")
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # make_ndarray raises several types for inconsistent protos
        raise invalid(f"input {key!r} is not a well-formed TensorProto: {str(error).splitlines()[0]}")


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


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager):
        self.manager = manager

    def _resolve(self, spec: model_pb2.ModelSpec, call: _Call) -> LoadedVersion:
        loaded = self.manager.resolve(*model_spec_target(spec))
        call.version = loaded.version
        return loaded

    def Predict(self, request: predict_pb2.PredictRequest, context):
        with handled("Predict", request.model_spec.name, context) as call:
            loaded = self._resolve(request.model_spec, call)
            signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            inputs = {key: tensor_to_array(key, proto) for key, proto in request.inputs.items()}
            outputs = loaded.run(signature_name, inputs, list(request.output_filter))
            response = predict_pb2.PredictResponse()
            _answer_spec(response.model_spec, loaded, signature_name)
            for key, value in outputs.items():
                response.outputs[key].CopyFrom(tf.make_tensor_proto(value))
            return response

    def Classify(self, request: classification_pb2.ClassificationRequest, context):
        """tf.Example in; per example the two classes of the model contract, scored by `probability`."""
        with handled("Classify", request.model_spec.name, context) as call:
            loaded = self._resolve(request.model_spec, call)
            signature_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
            definition = loaded.signature(signature_name)
            string_inputs = [key for key, info in definition.inputs.items() if info.dtype == tf.string.as_datatype_enum]
            if len(definition.inputs) != 1 or not string_inputs:
                raise invalid(f"signature {signature_name!r} does not take one batch of serialized tf.Example")
            if "probability" not in definition.outputs:
                raise invalid(f"signature {signature_name!r} has no 'probability' output to classify with")
            examples = serialized_examples(request.input)
            outputs = loaded.run(signature_name, {string_inputs[0]: examples}, ["probability"])
            response = classification_pb2.ClassificationResponse()
            _answer_spec(response.model_spec, loaded, signature_name)
            for probability in outputs["probability"]:
                classification = response.result.classifications.add()
                classification.classes.add(label=CLASS_NAMES[1], score=float(probability))
                classification.classes.add(label=CLASS_NAMES[0], score=float(1.0 - probability))
            return response

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
    """The gRPC server (and optionally REST) over one ModelManager; ports 0 pick free ports."""

    def __init__(self, server_config: model_server_config_pb2.ModelServerConfig, host: str = "127.0.0.1",
                 grpc_port: int = 8500, rest_port: Optional[int] = 8501, poll_seconds: float = 1.0,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, workers: int = 8, max_queued: int = 64,
                 config_file: Optional[str] = None, config_poll_seconds: float = 0.0):
        """`config_file` and `config_poll_seconds` > 0: re-read the model config file when it changes."""
        self.manager = ModelManager(server_config, poll_seconds, config_file, config_poll_seconds)
        self.host = host
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", max_message_bytes),
                     ("grpc.max_send_message_length", max_message_bytes)],
            maximum_concurrent_rpcs=workers + max_queued)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(self.manager), self._grpc)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(self.manager), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"{host}:{grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {host}:{grpc_port} (in use?)")
        self.rest = None
        if rest_port is not None:
            from serving.rest import RestServer
            self.rest = RestServer(self.manager, host, rest_port, max_message_bytes, workers)
        self.rest_port = self.rest.port if self.rest else None

    def start(self) -> "ModelServer":
        self.manager.start()
        self._grpc.start()
        if self.rest:
            self.rest.start()
        return self

    def stop(self, grace_seconds: float = 10.0) -> None:
        """Stops taking requests, lets in-flight ones finish (up to the grace period), stops polling."""
        done = self._grpc.stop(grace_seconds)
        if self.rest:
            self.rest.stop()
        done.wait()
        self.manager.stop()

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
