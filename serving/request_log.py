"""Request logs in TF Serving's format: sampled `PredictionLog` records in TFRecord files under a filename prefix.

TF Serving defines the setting, `ModelConfig.logging_config` (a LogCollectorConfig and a SamplingConfig), but its
open-source build registers no log collector (tensorflow/serving issues 408, 1846, 2677). This module is one, for
`pneumonia serve` and the DICOM node; serving/config.py checks the setting. Collector types: `tfrecord` (or
empty) logs each image's statistics (serving/image_stats.py) in its place; `tfrecord_with_images` logs the image
bytes as well, which makes the log patient data (docs/serving/security.md).

Files are `<prefix>.<UTC start>.<host>.<pid>-<token>.<n>.tfrecord`. Each is written as `<name>.tmp`, flushed
after every record and renamed when closed (at `max_file_bytes`, after `max_file_seconds`, at shutdown), so a
reader taking `*.tfrecord` sees whole files only. A crash leaves the `.tmp`: the next writer on that host cuts
it after its last whole record and closes it, so a crash loses at most the record being written. After each
close the oldest closed files under the prefix are deleted, with a log line, until they fit `max_total_bytes`.

One background thread per prefix computes the statistics and writes, from a queue bounded in records and in
image bytes (films can be megabytes each): a request never waits for the disk or a decode; when the queue is
full its record is dropped and counted in the metrics.
"""

import dataclasses
import glob
import logging
import os
import queue
import re
import socket
import struct
import threading
import time
import uuid
from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, prediction_log_pb2

from serving import image_stats, metrics, tensors

STATISTICS_INPUT = "image_statistics"  # the logged request's input: one serialized tf.Example per image
SUFFIX, OPEN_SUFFIX = ".tfrecord", ".tfrecord.tmp"
TOKEN = uuid.uuid4().hex[:8]  # this process's writers, told apart from earlier processes with the same pid
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0]) or "host"
OPEN_NAME = re.compile(r"\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)-(?P<token>[0-9a-f]{8})\.\d+\.tfrecord\.tmp$")
log = logging.getLogger("serving.request_log")


@dataclasses.dataclass(frozen=True)
class Rotation:
    """When a file is closed, and how much closed files may hold in all."""

    max_file_bytes: int = 64 << 20
    max_file_seconds: float = 3600.0
    max_total_bytes: int = 1 << 30

    def __post_init__(self):
        if not 0 < self.max_file_bytes <= self.max_total_bytes or self.max_file_seconds <= 0:
            raise ValueError(
                f"request log rotation needs 0 < file size ({self.max_file_bytes} bytes) <= total size "
                f"({self.max_total_bytes} bytes) and a file age above 0 s (got {self.max_file_seconds:g})"
            )


DEFAULT_ROTATION = Rotation()


def log_files(prefix: str) -> List[str]:
    """The closed log files under a filename prefix (local or gs://), oldest first."""
    return sorted(tf.io.gfile.glob(f"{prefix}.*{SUFFIX}"))


@dataclasses.dataclass
class Entry:
    """One answered request to log: what it asked, which images it carried, what the model said."""

    model_spec: model_pb2.ModelSpec  # name, version and signature that answered
    origin: str  # GRPC, REST or DICOM (LogMetadata.request_origin)
    ids: List[str]  # one per image
    images: List[bytes]  # the encoded images, for their statistics (and the log, with images)
    outputs: Dict[str, np.ndarray]
    sampling_rate: float = 1.0
    inputs: Optional[Dict[str, np.ndarray]] = None  # the request's own inputs: logged only with images
    timestamp: int = dataclasses.field(default_factory=lambda: int(time.time()))


def prediction_log(entry: Entry) -> prediction_log_pb2.PredictionLog:
    """The record: model spec, time and origin; per image its statistics as a tf.Example (the image itself only
    when `entry.inputs` is given); the outputs with one value per image (per-image maps such as Grad-CAM are
    not logged)."""
    record = prediction_log_pb2.PredictionLog()
    metadata = record.log_metadata
    metadata.model_spec.CopyFrom(entry.model_spec)
    metadata.sampling_config.sampling_rate = entry.sampling_rate
    metadata.timestamp_secs = entry.timestamp
    metadata.request_origin = entry.origin
    request, response = record.predict_log.request, record.predict_log.response
    request.model_spec.CopyFrom(entry.model_spec)
    response.model_spec.CopyFrom(entry.model_spec)
    count = len(entry.ids)
    scores = entry.outputs.get("ood_score")
    examples = [
        image_stats.to_example(image_id, image, None if scores is None else float(scores[i])).SerializeToString()
        for i, (image_id, image) in enumerate(zip(entry.ids, entry.images))
    ]
    tensors.fill_proto(np.array(examples, dtype=object), request.inputs[STATISTICS_INPUT])
    for key, value in (entry.inputs or {}).items():
        tensors.fill_proto(np.asarray(value), request.inputs[key])
    for key, value in entry.outputs.items():
        value = np.asarray(value)
        if value.ndim == 1 and len(value) == count:
            tensors.fill_proto(value, response.outputs[key])
    return record


def whole_records_bytes(data: bytes) -> int:
    """How many leading bytes of a TFRecord file hold whole records (length, its CRC, data, data CRC)."""
    end = 0
    while end + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[end : end + 8])
        if end + 16 + length > len(data):
            break
        end += 16 + length
    return end


def _writer_is_gone(match: re.Match) -> bool:
    if match["host"] != HOST or match["token"] == TOKEN:
        return False
    pid = int(match["pid"])
    if pid == os.getpid():  # a restarted container runs with the same pid as its predecessor
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def recover(prefix: str) -> None:
    """Closes the files that writers on this host left open when they died, cut after their last whole record."""
    for path in glob.glob(f"{glob.escape(prefix)}.*{OPEN_SUFFIX}"):
        match = OPEN_NAME.search(path)
        if not match or not _writer_is_gone(match):
            continue
        with open(path, "r+b") as f:
            kept = whole_records_bytes(f.read())
            f.truncate(kept)
        if kept:
            os.rename(path, path[: -len(".tmp")])
            log.warning("request log %s was left open by a stopped writer: closed after its last whole record", path)
        else:
            os.remove(path)


class RequestLogWriter:
    """Writes Entries to rotating files under one filename prefix, from a background thread."""

    def __init__(
        self,
        prefix: str,
        rotation: Rotation = DEFAULT_ROTATION,
        queue_size: int = 1024,
        max_queued_bytes: int = 256 << 20,
    ):
        self.prefix = prefix
        self.rotation = rotation
        os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
        recover(prefix)
        self._queue: "queue.Queue[Optional[Entry]]" = queue.Queue(queue_size)
        self._max_queued_bytes = max_queued_bytes
        self._queued_bytes = 0
        self._queued_lock = threading.Lock()
        self._file: Optional[tf.io.TFRecordWriter] = None
        self._path = ""
        self._opened = 0.0
        self._bytes = 0
        self._sequence = 0
        self._thread = threading.Thread(target=self._run, name="request-log", daemon=True)
        self._thread.start()

    def submit(self, entry: Entry) -> None:
        """Queues an entry; drops it (counted) when the queue is full, so a slow disk never slows a request."""
        size = sum(map(len, entry.images))
        with self._queued_lock:
            try:
                if self._queued_bytes + size > self._max_queued_bytes:
                    raise queue.Full
                self._queue.put_nowait(entry)
                self._queued_bytes += size
            except queue.Full:
                metrics.REQUEST_LOG.labels(entry.model_spec.name, "dropped").inc()

    def close(self) -> None:
        """Writes what is queued, closes the open file and stops the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                entry = self._queue.get(timeout=self._seconds_left())
            except queue.Empty:  # the open file is old enough: closed even when no request comes
                self._guarded(self._close_file)
                continue
            if entry is None:
                self._guarded(self._close_file)
                return
            with self._queued_lock:
                self._queued_bytes -= sum(map(len, entry.images))
            written = self._guarded(self._write, entry)
            metrics.REQUEST_LOG.labels(entry.model_spec.name, "written" if written else "failed").inc()

    def _seconds_left(self) -> Optional[float]:
        """Until the open file must close for its age; None (wait for a request) when no file is open."""
        return max(self._opened + self.rotation.max_file_seconds - time.monotonic(), 0.0) if self._file else None

    def _guarded(self, step, *args) -> bool:
        """Runs a write or close; a failure (a full disk) is logged and never stops the thread."""
        try:
            step(*args)
            return True
        except Exception:
            log.exception("request log under %s: a write or close failed", self.prefix)
            return False

    def _write(self, entry: Entry) -> None:
        record = prediction_log(entry).SerializeToString()  # here: the statistics' decode is off the request path
        if self._file and time.monotonic() - self._opened >= self.rotation.max_file_seconds:
            self._close_file()
        if not self._file:
            self._sequence += 1
            started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            self._path = f"{self.prefix}.{started}.{HOST}.{os.getpid()}-{TOKEN}.{self._sequence:06d}{OPEN_SUFFIX}"
            self._file = tf.io.TFRecordWriter(self._path)
            self._opened, self._bytes = time.monotonic(), 0
        self._file.write(record)
        self._file.flush()
        self._bytes += len(record) + 16
        if self._bytes >= self.rotation.max_file_bytes:
            self._close_file()

    def _close_file(self) -> None:
        if not self._file:
            return
        self._file.close()
        self._file = None
        os.rename(self._path, self._path[: -len(".tmp")])
        self._bound()

    def _bound(self) -> None:
        """Deletes the oldest closed files until all closed files under the prefix fit max_total_bytes."""
        sizes = {}
        for path in log_files(self.prefix):
            try:
                sizes[path] = os.path.getsize(path)
            except FileNotFoundError:  # another writer on this prefix deleted it first
                pass
        total, deleted = sum(sizes.values()), []
        for path in sorted(sizes):
            if total <= self.rotation.max_total_bytes:
                break
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            total -= sizes[path]
            deleted.append(os.path.basename(path))
        if deleted:
            log.warning(
                "request log under %s over %d bytes: deleted the %d oldest closed file(s): %s",
                self.prefix,
                self.rotation.max_total_bytes,
                len(deleted),
                ", ".join(deleted),
            )
