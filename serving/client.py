"""A gRPC client for the served model: raw image bytes in, probability / label / threshold / version and the
out-of-distribution flag out.

Talks TF Serving's PredictionService, so it works against `pneumonia serve` and the official
`tensorflow_model_server` alike. Every failure becomes a ClientError with one line that says what
went wrong (server down, not an image, model or version missing).
"""

import dataclasses
import time
from typing import List, Optional, Sequence

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving.tensors import to_array
from serving.tls import channel_credentials

IMAGE_SIGNATURE = "predict_images"
EXPLAIN_SIGNATURE = "explain_images"  # predict_images' outputs plus the heatmaps; costs a backward pass
OOD_OUTPUTS = ("in_distribution", "ood_score", "ood_threshold")
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
MAGIC_NUMBERS = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")  # what the model decodes


class ClientError(Exception):
    """A one-line, user-facing reason a call failed; `retryable` when the server was unavailable."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclasses.dataclass(frozen=True)
class Prediction:
    probability: float  # of pneumonia
    label: str  # the class at the model's threshold
    threshold: float
    model_version: int
    # The model's out-of-distribution guard (None from a model exported without one): when the image is
    # unlike the training X-rays, `label` is no reliable answer and clients should say so.
    in_distribution: Optional[bool] = None
    ood_score: Optional[float] = None
    ood_threshold: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Explanation:
    prediction: Prediction
    gradcam: np.ndarray  # float32 [S/4, S/4] in [0, 1], for the class predicted at the threshold


def read_image(path: str, allow_lateral: bool = False) -> bytes:
    """The bytes the model takes: the file itself for a JPEG, PNG, GIF or BMP, or the PNG that serving/dicom.py
    makes of a DICOM file (the same bytes prepare stores); anything else is refused up front."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise ClientError(f"cannot read {path}: {error.strerror}") from error
    if data.startswith(MAGIC_NUMBERS):
        return data
    from serving import dicom  # pydicom is imported only when a DICOM file comes

    if dicom.is_dicom(data):
        try:
            return dicom.dicom_to_png(data, allow_lateral)
        except dicom.DicomRefused as error:
            raise ClientError(f"{path}: {error}") from error
    raise ClientError(f"{path} is not an image (expected JPEG, PNG, GIF, BMP or DICOM bytes)")


def _bytes_tensor(values: Sequence[bytes]) -> tensor_pb2.TensorProto:
    return tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING,
        string_val=list(values),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]),
    )


def _predictions(outputs: dict, served: int) -> List[Prediction]:
    guarded = all(key in outputs for key in OOD_OUTPUTS)
    return [
        Prediction(
            float(outputs["probability"][i]),
            outputs["label"][i].decode("utf-8"),
            float(outputs["threshold"][i]),
            served,
            *(
                (
                    bool(outputs["in_distribution"][i]),
                    float(outputs["ood_score"][i]),
                    float(outputs["ood_threshold"][i]),
                )
                if guarded
                else ()
            ),
        )
        for i in range(len(outputs["probability"]))
    ]


class PredictionClient:
    """One channel to a server; `predict` sends one batched Predict on `predict_images`, `explain` on
    `explain_images`.

    Retries UNAVAILABLE (server starting, restarting, briefly overloaded) with backoff; every call
    has a deadline. With `ca_cert` (PEM file of the CA that signed the server) or a `client_cert` and
    `client_key` pair (for mutual TLS), the channel is TLS.
    """

    def __init__(
        self,
        server: str = "127.0.0.1:8500",
        model_name: str = "pneumonia",
        timeout_seconds: float = 30.0,
        retries: int = 3,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        ca_cert: Optional[str] = None,
        client_cert: Optional[str] = None,
        client_key: Optional[str] = None,
    ):
        self.server = server
        self.model_name = model_name
        self.timeout_seconds = timeout_seconds
        self.retries = retries
        try:
            credentials = channel_credentials(ca_cert, client_cert, client_key)
        except ValueError as error:
            raise ClientError(str(error)) from error
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self._channel = (
            grpc.secure_channel(server, credentials, options) if credentials else grpc.insecure_channel(server, options)
        )
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel).Predict
        self._status = model_service_pb2_grpc.ModelServiceStub(self._channel).GetModelStatus

    def __enter__(self) -> "PredictionClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def predict(self, images: Sequence[bytes], version: Optional[int] = None, label: str = "") -> List[Prediction]:
        """One prediction per encoded image, in order, all from the same model version."""
        return _predictions(*self._run(IMAGE_SIGNATURE, images, version, label))

    def explain(self, images: Sequence[bytes], version: Optional[int] = None, label: str = "") -> List[Explanation]:
        """As `predict`, from `explain_images`, with each image's Grad-CAM heatmap."""
        outputs, served = self._run(EXPLAIN_SIGNATURE, images, version, label)
        return [
            Explanation(prediction, outputs["gradcam"][i]) for i, prediction in enumerate(_predictions(outputs, served))
        ]

    def _run(self, signature: str, images: Sequence[bytes], version: Optional[int], label: str):
        """(outputs as numpy by name, the version that answered) of one Predict on `signature`."""
        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature
        if version is not None:
            request.model_spec.version.value = version
        elif label:
            request.model_spec.version_label = label  # a oneof with version: setting it clears version
        request.inputs["images"].CopyFrom(_bytes_tensor(images))
        response = self._call(self._predict, request)
        return {key: to_array(key, value) for key, value in response.outputs.items()}, response.model_spec.version.value

    def model_status(self) -> get_model_status_pb2.GetModelStatusResponse:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.model_name
        return self._call(self._status, request)

    def _call(self, method, request):
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout_seconds)
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    time.sleep(0.2 * 2**attempt)
                    continue
                raise ClientError(self._explain(error), error.code() == grpc.StatusCode.UNAVAILABLE) from error

    def _explain(self, error: grpc.RpcError) -> str:
        code, details = error.code(), (error.details() or "").split("\n")[0]
        if code == grpc.StatusCode.UNAVAILABLE and any(word in details.lower() for word in ("ssl", "handshake")):
            return (
                f"TLS with server {self.server} failed (check --ca-cert, and --client-cert/--client-key "
                f"for a server that verifies clients): {details}"
            )
        if code == grpc.StatusCode.UNAVAILABLE:
            return f"server {self.server} is unavailable (is `pneumonia serve` running?): {details}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return f"server {self.server} did not answer within {self.timeout_seconds:g} s"
        return f"{code.name.lower().replace('_', ' ')}: {details}"
