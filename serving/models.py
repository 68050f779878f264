"""Served models: version discovery, policies, availability-preserving hot swap, request resolution.

Mirrors TF Serving's model manager: a background poll of each base path loads the versions the
policy wants, warms each new version up before it can be chosen (replaying the warm-up requests shipped
in its assets.extra/, serving/warmup.py), and unloads an old version only
once a wanted one is available, so the last loaded version is never dropped. Requests hold a
reference to the version they resolved, so an unload never cuts an in-flight request short.
"""

import dataclasses
import functools
import json
import logging
import os
import re
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import get_model_status_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving import config as model_config
from serving import metrics
from serving.batching import Batcher
from serving.errors import ServingError, invalid, not_found
from serving.pixels import PixelBudget, PixelBudgetExhausted, request_pixels
from serving.repository import SAVED_MODEL_FILE, servable_versions

DEFAULT_SIGNATURE = "serving_default"
State = get_model_status_pb2.ModelVersionStatus.State
request_log = logging.getLogger("serving.requests")
log = logging.getLogger("serving.models")


def tf_error_line(error: tf.errors.OpError) -> str:
    """The one meaningful line of a TF runtime error (drops 'Graph execution error', node and op noise)."""
    noise = ("Graph execution error", "Detected at node", "<stack traces", "[[")
    lines = [line.strip() for line in error.message.splitlines()]
    meaningful = [line for line in lines if line and not line.startswith(noise)]
    line = (meaningful[0] if meaningful else lines[0]).split(" [Op:")[0]
    asserted = re.search(r"assertion failed: \[(.*)\]$", line)  # a tf.debugging.Assert in the graph: its message
    return asserted.group(1) if asserted else line


class LoadedVersion:
    """One loaded SavedModel version: its signature functions and SignatureDefs (for metadata and checks).

    With a `batcher`, its requests are merged with concurrent ones to the same signature (serving/batching.py).
    """

    def __init__(
        self, model_name: str, version: int, path: str, budget: PixelBudget, batcher: Optional[Batcher] = None
    ):
        self.model_name = model_name
        self.version = version
        self.path = path
        self.budget = budget
        self.batcher = batcher
        graph = saved_model_pb2.SavedModel()
        with open(os.path.join(path, SAVED_MODEL_FILE), "rb") as f:
            graph.ParseFromString(f.read())
        self.signature_defs: Dict[str, meta_graph_pb2.SignatureDef] = {
            name: definition
            for name, definition in graph.meta_graphs[0].signature_def.items()
            if not name.startswith("__")
        }
        self._model = tf.saved_model.load(path)
        self._functions = {name: self._model.signatures[name] for name in self.signature_defs}

    def signature(self, name: str) -> meta_graph_pb2.SignatureDef:
        name = name or DEFAULT_SIGNATURE
        if name not in self.signature_defs:
            raise not_found(
                f"model {self.model_name!r} version {self.version} has no signature {name!r}; "
                f"signatures: {', '.join(sorted(self.signature_defs))}"
            )
        return self.signature_defs[name]

    def run(
        self,
        signature_name: str,
        inputs: Mapping[str, np.ndarray],
        output_filter: Sequence[str] = (),
        wait_seconds: Optional[float] = None,
    ) -> Dict[str, np.ndarray]:
        """Checks inputs against the SignatureDef (names, dtype, shape), waits (up to `wait_seconds`) for
        room in the decoded-pixel budget, runs it (in a batch, with a batcher), returns numpy outputs.

        The pixels stay reserved until the answer comes back: a request waiting for its batch counts as
        decoding, so a batch never decodes more than the budget."""
        signature_name = signature_name or DEFAULT_SIGNATURE
        definition = self.signature(signature_name)
        expected = set(definition.inputs)
        if set(inputs) != expected:
            raise invalid(f"signature {signature_name!r} takes inputs {sorted(expected)}, got {sorted(inputs)}")
        unknown_outputs = set(output_filter) - set(definition.outputs)
        if unknown_outputs:
            raise invalid(
                f"output_filter names {sorted(unknown_outputs)}, not outputs of signature "
                f"{signature_name!r} ({sorted(definition.outputs)})"
            )
        arrays = {key: _checked_array(key, value, definition.inputs[key]) for key, value in inputs.items()}
        try:
            with self.budget.reserve(
                request_pixels(inputs), wait_seconds, (self.model_name, str(self.version), signature_name)
            ):
                if self.batcher is None:
                    outputs = self._call(signature_name, arrays)
                else:
                    call = functools.partial(self._call, signature_name)
                    outputs = self.batcher.submit(self, signature_name, call, arrays).result()
        except PixelBudgetExhausted as error:
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        except tf.errors.InvalidArgumentError as error:
            raise invalid(f"input rejected by the model (e.g. undecodable image bytes): {tf_error_line(error)}")
        return {key: outputs[key] for key in output_filter or list(outputs)}

    def _call(self, signature_name: str, arrays: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The signature function on checked numpy inputs (one request's, or a merged batch's)."""
        definition = self.signature_defs[signature_name].inputs
        tensors = {key: tf.constant(value, tf.dtypes.as_dtype(definition[key].dtype)) for key, value in arrays.items()}
        return {key: value.numpy() for key, value in self._functions[signature_name](**tensors).items()}

    def close(self) -> None:
        """Called on unload: this version's queued batches run now rather than at their timeout, as TF Serving
        closes an unloading servable's batch queues. Requests holding the version still finish."""
        if self.batcher is not None:
            self.batcher.close(self)


def _checked_array(key: str, value: np.ndarray, info: meta_graph_pb2.TensorInfo) -> np.ndarray:
    dtype = tf.dtypes.as_dtype(info.dtype)
    value = np.asarray(value)
    given = tf.string if value.dtype.kind in "OSU" else tf.dtypes.as_dtype(value.dtype)
    if given != dtype:
        raise invalid(f"input {key!r} must be {dtype.name}, got {given.name}")
    if not info.tensor_shape.unknown_rank:
        shape = [dim.size for dim in info.tensor_shape.dim]
        if len(shape) != value.ndim or any(want not in (-1, got) for want, got in zip(shape, value.shape)):
            readable = [None if size == -1 else size for size in shape]
            raise invalid(f"input {key!r} must have shape {readable}, got {list(value.shape)}")
    return value


@dataclasses.dataclass
class VersionStatus:
    state: int
    error: str = ""  # why loading failed; empty when the version is (or was) fine


WarmUp = Callable[["LoadedVersion"], int]  # runs a new version's warm-up requests, returns how many


class ServedModel:
    """One model name: its base path, version policy and labels (from a ModelConfig), loaded versions."""

    def __init__(
        self,
        config: model_server_config_pb2.ModelConfig,
        budget: PixelBudget,
        warm_up: Optional[WarmUp] = None,
        batcher: Optional[Batcher] = None,
    ):
        self.config = config
        self.budget = budget
        self.batcher = batcher
        self.name = config.name
        self._warm_up = warm_up
        self._loaded: Dict[int, LoadedVersion] = {}  # replaced as a whole, never mutated: readers need no lock
        self._status: Dict[int, VersionStatus] = {}
        self._swap = threading.Lock()  # one poll at a time

    def poll(self) -> None:
        """Loads and warms wanted versions first, then unloads the unwanted ones (keeping one loaded)."""
        with self._swap:
            wanted = model_config.wanted_versions(self.config, servable_versions(self.config.base_path))
            for version in wanted:
                failed = version in self._status and self._status[version].error
                if version not in self._loaded and not failed:  # an unloaded version may be wanted again
                    self._load(version)
            keep = {v for v in wanted if v in self._loaded} or set(sorted(self._loaded)[-1:])
            for version in sorted(set(self._loaded) - keep):
                unloading = self._loaded[version]
                self._loaded = {v: loaded for v, loaded in self._loaded.items() if v != version}
                unloading.close()
                self._status[version] = VersionStatus(State.END)
                log.info("model %s version %d unloaded", self.name, version)

    def _load(self, version: int) -> None:
        path = os.path.join(self.config.base_path, str(version))
        self._status[version] = VersionStatus(State.LOADING)
        started = time.monotonic()
        try:
            loaded = LoadedVersion(self.name, version, path, self.budget, self.batcher)
            replayed = self._warm_up(loaded) if self._warm_up else 0
        except Exception as error:  # any unloadable folder is reported, never served, never fatal
            message = (
                tf_error_line(error)
                if isinstance(error, tf.errors.OpError)
                else (str(error) or type(error).__name__).splitlines()[0]
            )
            self._status[version] = VersionStatus(State.END, f"failed to load {path}: {message}")
            log.error("model %s version %d failed to load: %s", self.name, version, message)
            return
        self._loaded = {**self._loaded, version: loaded}
        self._status[version] = VersionStatus(State.AVAILABLE)
        log.info(
            "model %s version %d available (loaded and %d warm-up requests replayed in %.1f s)",
            self.name,
            version,
            replayed,
            time.monotonic() - started,
        )

    def resolve(self, version: Optional[int] = None, label: str = "") -> LoadedVersion:
        """TF Serving's rules: a version, else a version label, else the latest loaded version."""
        loaded = self._loaded
        if label:
            if label not in self.config.version_labels:
                raise not_found(
                    f"model {self.name!r} has no version label {label!r}; labels: "
                    f"{', '.join(sorted(self.config.version_labels)) or 'none'}"
                )
            version = self.config.version_labels[label]
        if version is not None:
            if version not in loaded:
                raise not_found(
                    f"model {self.name!r} version {version} is not loaded; loaded versions: "
                    f"{', '.join(map(str, sorted(loaded))) or 'none'}"
                )
            return loaded[version]
        if not loaded:
            raise not_found(f"model {self.name!r} has no loaded version (none found under {self.config.base_path})")
        return loaded[max(loaded)]

    def status(self, version: Optional[int] = None) -> List[get_model_status_pb2.ModelVersionStatus]:
        statuses = dict(self._status)
        if version is not None:
            if version not in statuses:
                raise not_found(f"model {self.name!r} has never seen version {version}")
            statuses = {version: statuses[version]}
        result = []
        for number, status in sorted(statuses.items()):
            entry = get_model_status_pb2.ModelVersionStatus(version=number, state=status.state)
            entry.status.error_code = grpc.StatusCode.UNKNOWN.value[0] if status.error else 0
            entry.status.error_message = status.error
            result.append(entry)
        return result


class ModelManager:
    """All served models, polled in the background every `poll_seconds`, sharing one decoded-pixel budget
    and, with batching on, one batcher (its threads serve every model, as TF Serving's shared scheduler does).

    With `config_file` (and `config_poll_seconds` > 0), the model config file is read again when it changes,
    as TF Serving's --model_config_file_poll_wait_seconds does: version labels and policies follow it (e.g.
    after `pneumonia calibrate --label`), new models are added and models no longer listed are dropped.
    """

    def __init__(
        self,
        server_config: model_server_config_pb2.ModelServerConfig,
        poll_seconds: float = 1.0,
        budget: Optional[PixelBudget] = None,
        warm_up: Optional[WarmUp] = None,
        config_file: Optional[str] = None,
        config_poll_seconds: float = 0.0,
        batcher: Optional[Batcher] = None,
    ):
        self.budget = budget or PixelBudget()
        self.warm_up = warm_up
        self.batcher = batcher
        self.models = {
            model.name: ServedModel(model, self.budget, warm_up, batcher)
            for model in server_config.model_config_list.config
        }
        self.poll_seconds = poll_seconds
        self.config_file = config_file if config_poll_seconds > 0 else None
        self.config_poll_seconds = config_poll_seconds
        self._config_stamp = self._stamp()
        self._config_checked = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_forever, name="model-poller", daemon=True)

    def start(self) -> "ModelManager":
        """Polls once synchronously (the server starts with its models loaded), then in the background."""
        self.poll()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _stamp(self) -> Optional[Tuple[float, int]]:
        if not self.config_file:
            return None
        stat = os.stat(self.config_file)
        return stat.st_mtime, stat.st_size

    def reload_config(self) -> None:
        """Applies the model config file if it changed since last read; a file that no longer parses is
        logged and the current config kept."""
        stamp = self._stamp()
        if stamp == self._config_stamp:
            return
        self._config_stamp = stamp
        try:
            server_config = model_config.read(self.config_file)
        except ValueError as error:
            log.error("model config %s not applied, keeping the current one: %s", self.config_file, error)
            return
        models = {}
        for model_config_proto in server_config.model_config_list.config:
            served = self.models.get(model_config_proto.name) or ServedModel(
                model_config_proto, self.budget, self.warm_up, self.batcher
            )
            served.config = model_config_proto  # one reference swap: readers see the old or the new config
            models[model_config_proto.name] = served
        self.models = models
        log.info(
            "model config %s applied: %s",
            self.config_file,
            ", ".join(
                f"{name} (labels {dict(served.config.version_labels) or 'none'})" for name, served in models.items()
            ),
        )

    def poll(self) -> None:
        if self.config_file and time.monotonic() - self._config_checked >= self.config_poll_seconds:
            self._config_checked = time.monotonic()
            self.reload_config()
        for model in list(self.models.values()):
            model.poll()

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll()
            except Exception:  # a poll failure (e.g. unreadable base path) must not stop later polls
                log.exception("polling the model base paths failed")

    def model(self, name: str) -> ServedModel:
        if name not in self.models:
            raise not_found(f"unknown model {name!r}; served models: {', '.join(sorted(self.models))}")
        return self.models[name]

    def resolve(self, name: str, version: Optional[int] = None, label: str = "") -> LoadedVersion:
        return self.model(name).resolve(version, label)


def log_request(
    protocol: str, method: str, model: str, version: Optional[int], started: float, code: grpc.StatusCode
) -> None:
    """One structured (JSON) log line per request, and the request in the server's metrics."""
    metrics.record_request(protocol, method, model, time.monotonic() - started, code.name)
    request_log.info(
        json.dumps(
            {
                "protocol": protocol,
                "method": method,
                "model": model,
                "version": version,
                "latency_ms": round((time.monotonic() - started) * 1000, 3),
                "status": code.name,
            }
        )
    )
