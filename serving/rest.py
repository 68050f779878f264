"""TF Serving's REST API on a second port: model status, metadata and :predict, same errors as gRPC.

Paths: `GET /v1/models/<name>[/versions/<v>|/labels/<l>][/metadata]` and
`POST /v1/models/<name>[/versions/<v>|/labels/<l>]:predict` with `instances` (row format) or
`inputs` (columnar); binary strings travel as `{"b64": "..."}` both ways.

One path of this server's own, outside TF Serving's `/v1/models/` (the official server answers it 400
"Malformed request"): `POST /v1/dicom:to_png[?allow_lateral=true]` takes a DICOM file's bytes as the body
and answers the PNG that serving/dicom.py makes of it, `{"png": {"b64": ...}, "view_position": ...,
"windowing": ...}`, or 400 with the one-line refusal. A client then sends that PNG to :predict like any
other, so the prediction is the PNG's.

With a web folder, `GET /` also serves the page in `serving/web/` (static files only: the page uses the
paths above, and `/v1/dicom:to_png` only for DICOM files, so for JPEG/PNG it works in front of the official
server too).
"""

import base64
import http.server
import json
import logging
import mimetypes
import os
import re
import ssl
import threading
import time
import urllib.parse
from concurrent import futures
from typing import Any, Dict, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from serving import metrics
from serving.models import DEFAULT_SIGNATURE, LoadedVersion, ModelManager, ServingError, invalid, log_request, not_found
from serving.observer import REQUEST_ID_HEADER, Observer
from serving.pixels import PixelBudget, PixelBudgetExhausted

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,  # the batch queue full
}
log = logging.getLogger("serving.rest")
WEB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "web")
# Everything the page needs comes from this server; it runs on networks without internet access.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}
PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict)?$"
)
DICOM_PATH = "/v1/dicom:to_png"  # not TF Serving's: the official server has no DICOM conversion


def decode_b64(value: Any) -> Any:
    """Replaces every {"b64": "..."} in a JSON value by its bytes, and plain strings by UTF-8 bytes."""
    if isinstance(value, dict):
        if set(value) == {"b64"}:
            try:
                return base64.b64decode(value["b64"], validate=True)
            except (ValueError, TypeError) as error:
                raise invalid(f'invalid base64 in {{"b64": ...}}: {error}')
        return {key: decode_b64(item) for key, item in value.items()}
    if isinstance(value, list):
        return [decode_b64(item) for item in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def to_json(value: Any) -> Any:
    """numpy output -> JSON: bytes as text when UTF-8, else {"b64": ...}."""
    if isinstance(value, np.ndarray):
        return [to_json(item) for item in value] if value.ndim else to_json(value.item())
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    return value.item() if isinstance(value, np.generic) else value


def _array(key: str, value: Any, dtype: tf.DType) -> np.ndarray:
    try:
        array = np.array(value, dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
    except (ValueError, TypeError) as error:
        raise invalid(f"input {key!r} cannot be read as a {dtype.name} tensor: {error}")
    if dtype == tf.string and not all(isinstance(item, bytes) for item in array.reshape(-1)):
        raise invalid(f'input {key!r} must be {dtype.name} (strings, or {{"b64": ...}} for binary)')
    return array


def predict_inputs(
    body: Dict[str, Any], loaded: LoadedVersion, signature_name: str
) -> Tuple[Dict[str, np.ndarray], bool]:
    """The request's tensors by input name, and whether it used the row (`instances`) format."""
    definition = loaded.signature(signature_name)
    keys = sorted(definition.inputs)
    if ("instances" in body) == ("inputs" in body):
        raise invalid("the request needs exactly one of 'instances' (rows) or 'inputs' (columns)")
    row_format = "instances" in body
    data = decode_b64(body["instances"] if row_format else body["inputs"])
    if row_format:
        if not isinstance(data, list):
            raise invalid("'instances' must be a list")
        if len(keys) == 1 and not all(isinstance(row, dict) for row in data):
            columns = {keys[0]: data}
        else:
            if not all(isinstance(row, dict) for row in data):
                raise invalid(f"each instance must be an object with the inputs {keys}")
            columns = {key: [row.get(key) for row in data] for key in {k for row in data for k in row}}
    else:
        columns = data if isinstance(data, dict) else {keys[0]: data}
    unknown = set(columns) - set(keys)
    if unknown:
        raise invalid(f"signature {signature_name!r} has no inputs {sorted(unknown)}; its inputs: {keys}")
    return {
        key: _array(key, value, tf.dtypes.as_dtype(definition.inputs[key].dtype)) for key, value in columns.items()
    }, row_format


def dicom_answer(data: bytes, allow_lateral: bool, budget: PixelBudget) -> Dict[str, Any]:
    """A DICOM file's bytes -> the module's PNG and the facts a page shows; a refusal is INVALID_ARGUMENT
    with its one line. The decode is charged to the server's pixel budget, as a :predict's images are."""
    from serving import dicom  # pydicom is imported only when a DICOM file comes

    try:
        dataset = dicom.read(data)
        dicom.check(dataset, allow_lateral)
        with budget.reserve(dicom.declared_pixels(dataset)):
            converted = dicom.to_model_input(dataset, allow_lateral)
    except dicom.DicomRefused as refused:
        raise invalid(str(refused))
    except PixelBudgetExhausted as error:
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
    return {"png": to_json(converted.png), "view_position": converted.view_position, "windowing": converted.windowing}


def predict_response(outputs: Dict[str, np.ndarray], row_format: bool) -> Dict[str, Any]:
    if not row_format:
        only = len(outputs) == 1
        return {
            "outputs": to_json(next(iter(outputs.values())))
            if only
            else {key: to_json(value) for key, value in outputs.items()}
        }
    rows = len(next(iter(outputs.values())))
    if len(outputs) == 1:
        return {"predictions": to_json(next(iter(outputs.values())))}
    return {"predictions": [{key: to_json(value[row]) for key, value in outputs.items()} for row in range(rows)]}


class RestHandler(http.server.BaseHTTPRequestHandler):
    manager: ModelManager
    max_body_bytes: int
    web_dir: Optional[str]  # the page's static files; None: no page
    observer: Observer
    metrics_path: Optional[str]  # where the Prometheus metrics are served; None: not served
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may stay silent (a stalled TLS handshake, slowloris, idle keep-alive)

    def log_message(self, format, *args):  # one structured line per request is logged instead
        pass

    def do_GET(self):
        page_file = self._page_file()
        if self.metrics_path and self.path.split("?", 1)[0] == self.metrics_path:
            self._send(metrics.page(), metrics.CONTENT_TYPE)
        elif page_file:
            self._send_page_file(page_file)
        else:
            self._respond("GET")

    def _page_file(self) -> Optional[str]:
        """The web folder's file this GET names (`/` is index.html), or None: nothing outside the folder."""
        if not self.web_dir:
            return None
        name = self.path.split("?", 1)[0].lstrip("/") or "index.html"
        return os.path.join(self.web_dir, name) if name in os.listdir(self.web_dir) else None

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_page_file(self, path: str) -> None:
        with open(path, "rb") as f:
            body = f.read()
        content_type = mimetypes.guess_type(path)[0] or "application/octet-stream"
        if content_type.startswith("text/") or content_type.endswith("javascript"):
            content_type += "; charset=utf-8"
        self.send_response(200)
        for header, value in {**PAGE_HEADERS, "Content-Type": content_type, "Content-Length": str(len(body))}.items():
            self.send_header(header, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        self._respond("POST")

    def _respond(self, verb: str) -> None:
        started, model, version = time.monotonic(), "", None
        code, payload = grpc.StatusCode.OK, {}
        try:
            length = self._body_length()
            path, _, query = self.path.partition("?")
            if path == DICOM_PATH:
                payload = self._dicom(verb, query, length)
            else:
                body = self._read_json(length)
                match = PATH.match(self.path)
                if not match:
                    raise not_found(f"no such path {self.path}; use /v1/models/<name>[/versions/<v>][:predict]")
                model, suffix = match["name"], match["suffix"] or ""
                if (verb == "POST") != (suffix == ":predict"):
                    raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{verb} is not supported on {self.path}")
                target = (model, int(match["version"]) if match["version"] else None, match["label"] or "")
                payload, version = self._dispatch(suffix, target, body)
        except ServingError as error:
            code, payload = error.code, {"error": error.message}
        except Exception as error:
            code, payload = grpc.StatusCode.INTERNAL, {"error": f"internal error: {error}"}
        encoded = json.dumps(payload).encode("utf-8")
        self.send_response(HTTP_STATUS.get(code, 500))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(encoded)))
        self.end_headers()
        self.wfile.write(encoded)
        log_request("rest", f"{verb} {suffix_name(self.path)}", model, version, started, code)

    def _body_length(self) -> int:
        """The request's Content-Length, refused over the server's limit (--max-message-bytes) unread."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.max_body_bytes:
            self.close_connection = True  # the unread body must not be parsed as the next request
            raise ServingError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"request body of {length} bytes exceeds the limit of {self.max_body_bytes} bytes",
            )
        return length

    def _read_json(self, length: int) -> Optional[Dict[str, Any]]:
        if not length:
            return None
        try:
            body = json.loads(self.rfile.read(length))
        except (ValueError, UnicodeDecodeError) as error:
            raise invalid(f"request body is not JSON: {error}")
        if not isinstance(body, dict):
            raise invalid("request body must be a JSON object")
        return body

    def _dicom(self, verb: str, query: str, length: int) -> Dict[str, Any]:
        """POST /v1/dicom:to_png: the body is the DICOM file itself (no JSON, no base64)."""
        data = self.rfile.read(length)  # read even to refuse: an unread body would be taken for the next request
        if verb != "POST":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED, f"{verb} is not supported on {DICOM_PATH}")
        if not data:
            raise invalid(f"POST the DICOM file's bytes to {DICOM_PATH} (no body was sent)")
        allow_lateral = urllib.parse.parse_qs(query).get("allow_lateral") == ["true"]
        return dicom_answer(data, allow_lateral, self.manager.budget)

    def _dispatch(self, suffix: str, target, body) -> Tuple[Dict[str, Any], Optional[int]]:
        name, version, label = target
        if suffix == ":predict":
            if body is None:
                raise invalid("a :predict request needs a JSON body with 'instances' or 'inputs'")
            loaded = self.manager.resolve(name, version, label)
            signature_name = body.get("signature_name") or DEFAULT_SIGNATURE
            inputs, row_format = predict_inputs(body, loaded, signature_name)
            outputs = loaded.run(signature_name, inputs)
            self.observer.predicted(
                loaded, signature_name, inputs, outputs, "REST", self.headers.get(REQUEST_ID_HEADER)
            )
            return predict_response(outputs, row_format), loaded.version
        if suffix == "/metadata":
            loaded = self.manager.resolve(name, version, label)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name, response.model_spec.version.value = loaded.model_name, loaded.version
            signatures = get_model_metadata_pb2.SignatureDefMap(signature_def=loaded.signature_defs)
            return {
                "model_spec": json_format.MessageToDict(response.model_spec),
                "metadata": {"signature_def": json_format.MessageToDict(signatures)},
            }, loaded.version
        model = self.manager.model(name)
        if label:
            version = model.resolve(label=label).version
        status = get_model_status_pb2.GetModelStatusResponse(model_version_status=model.status(version))
        return json_format.MessageToDict(status, including_default_value_fields=True), version


def suffix_name(path: str) -> str:
    if path.partition("?")[0] == DICOM_PATH:
        return "dicom:to_png"
    return "predict" if path.endswith(":predict") else "metadata" if path.endswith("/metadata") else "status"


class _PooledHTTPServer(http.server.HTTPServer):
    """Handles each connection on a bounded thread pool (ThreadingHTTPServer's threads are unbounded)."""

    def __init__(self, address, handler, workers: int):
        super().__init__(address, handler)
        self.pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rest")

    def process_request(self, request, client_address):
        self.pool.submit(self._handle, request, client_address)

    def _handle(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except (ssl.SSLError, ConnectionError, TimeoutError) as error:  # refused TLS, a dropped or silent client
            log.info("REST connection from %s ended: %s", client_address[0], error)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)


class RestServer:
    """REST on a bounded pool; HTTPS when given an SSL context (the TLS handshake runs on the pool's
    thread, so a client that stalls it cannot hold up accepting other connections); the web page from
    `web_dir` at `/` unless it is None."""

    def __init__(
        self,
        manager: ModelManager,
        host: str,
        port: int,
        max_body_bytes: int,
        workers: int,
        ssl_context: Optional[ssl.SSLContext] = None,
        web_dir: Optional[str] = WEB_DIR,
        *,
        observer: Observer,
        metrics_path: Optional[str] = None,
    ):
        handler = type(
            "BoundRestHandler",
            (RestHandler,),
            {
                "manager": manager,
                "max_body_bytes": max_body_bytes,
                "web_dir": web_dir,
                "observer": observer,
                "metrics_path": metrics_path,
            },
        )
        self._http = _PooledHTTPServer((host, port), handler, workers)
        if ssl_context:
            self._http.socket = ssl_context.wrap_socket(
                self._http.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(target=self._http.serve_forever, name="rest", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stops accepting, then waits for the requests in progress."""
        self._http.shutdown()
        self._http.pool.shutdown(wait=True)
        self._http.server_close()
