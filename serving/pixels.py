"""The server's memory budget: decoded pixels in flight, counted from image headers before any decoding.

A compressed image's size on the wire says nothing about its decoded size: a 389 KB PNG can declare
20,000 x 20,000 pixels. The model graph refuses single images over its own pixel budget, but many
requests at once, or a model exported without that guard, can still decode gigabytes. So every
request is charged the pixels its images declare (JPEG SOF, PNG IHDR, GIF logical screen times
frames, BMP info header; images inside serialized tf.Examples too), and a server-wide budget bounds
the sum in flight:

- a request that declares more than the whole budget gets RESOURCE_EXHAUSTED at once (it could never fit);
- otherwise it waits, first come first served, until its pixels fit, for at most `max_wait_seconds`
  (and never past its gRPC deadline), then gets RESOURCE_EXHAUSTED.

Waiting, not refusing at once, because a burst of full-size X-rays from one PACS export is normal
traffic: it should be served a little later, not fail. Bytes that declare no pixels (malformed
input, non-image strings) are never held back; the model refuses them on its own.

`serving/` may not import `trainer/`, so the headers are read here in Python; a test checks this
reader against the model graph's reader and TensorFlow's decoders on the same files.
"""

import collections
import contextlib
import itertools
import struct
import threading
import time
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from google.protobuf.message import DecodeError

from serving import metrics

DEFAULT_MAX_DECODED_PIXELS = 400_000_000  # about 2 GB of decode buffers (grayscale uint8 + float32)
DEFAULT_MAX_WAIT_SECONDS = 30.0
MAX_JPEG_SEGMENTS = 256
JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # DHT, JPG and DAC share the range


def _jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from the first start-of-frame segment, walking the marker segments.

    Real files reach it within a few dozen segments; bytes crafted with thousands of tiny segments or
    fill bytes (a cheap way to burn this loop's CPU) are handed to TensorFlow's C++ header reader.
    """
    position = 2
    for _ in range(MAX_JPEG_SEGMENTS):
        if position + 4 > len(data) or data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # standalone markers carry no length
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image or start of scan before any frame header
            return None
        if marker in JPEG_SOF_MARKERS:
            if position + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[position + 5 : position + 9])
            return width, height
        position += 2 + struct.unpack(">H", data[position + 2 : position + 4])[0]
    return _jpeg_size_by_tensorflow(data)


def _jpeg_size_by_tensorflow(data: bytes) -> Optional[Tuple[int, int]]:
    import tensorflow as tf  # here: the common path needs no TensorFlow

    try:
        height, width = tf.image.extract_jpeg_shape(data).numpy()[:2].tolist()
    except tf.errors.InvalidArgumentError:
        return None
    return width, height


def _gif_frames(data: bytes) -> int:
    """How many images a GIF holds (a decoder that expands animations allocates every one)."""
    if len(data) < 13:
        return 1
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    frames = 0
    while position < len(data):
        block = data[position]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then sub-blocks
            position += 2
        elif block == 0x2C:  # image descriptor, optional local colour table, LZW code size, sub-blocks
            frames += 1
            if position + 10 > len(data):
                break
            local = data[position + 9]
            position += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0) + 1
        else:
            break
        while position < len(data) and data[position]:  # data sub-blocks end with a zero length
            position += data[position] + 1
        position += 1
    return max(frames, 1)


def declared_size(data: bytes) -> Tuple[int, int]:
    """(width, height) that an encoded JPEG, PNG, GIF or BMP declares in its header; (0, 0) for other
    bytes or a header cut short (no decoder accepts those). The model graph reads the same fields."""
    size = None
    if data[:3] == b"\xff\xd8\xff":
        size = _jpeg_size(data)
    elif data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        size = struct.unpack(">II", data[16:24])
    elif data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        size = struct.unpack("<HH", data[6:10])
    elif data[:2] == b"BM" and len(data) >= 26:
        size = tuple(abs(side) for side in struct.unpack("<ii", data[18:26]))  # negative height: top-down rows
    return size or (0, 0)


def declared_pixels(data: bytes) -> int:
    """Pixels a decoder would allocate for these bytes, from the header alone (every frame of a GIF)."""
    width, height = declared_size(data)
    return width * height * (_gif_frames(data) if data[:3] == b"GIF" and width else 1)


def _example_images(serialized: bytes) -> List[bytes]:
    if serialized[:1] != b"\x0a":  # a tf.Example's only field, `features`, is field 1, length-delimited
        return []
    from tensorflow.core.example import example_pb2  # here, so that `pneumonia --help` needs no TensorFlow

    try:
        example = example_pb2.Example.FromString(serialized)
    except (DecodeError, ValueError):
        return []
    return [
        value
        for feature in example.features.feature.values()
        for value in feature.bytes_list.value
        if declared_pixels(value)
    ]


def request_images(inputs: Mapping[str, np.ndarray]) -> List[bytes]:
    """Every encoded image in a request's string inputs, in order: raw encoded images, or images inside
    serialized tf.Examples."""
    images = []
    for value in inputs.values():
        value = np.asarray(value)
        if value.dtype.kind not in "OS":
            continue
        for item in value.reshape(-1):
            if isinstance(item, bytes):
                images.extend([item] if declared_pixels(item) else _example_images(item))
    return images


def request_pixels(inputs: Mapping[str, np.ndarray]) -> int:
    """Declared pixels of every image in a request's string inputs."""
    return sum(declared_pixels(image) for image in request_images(inputs))


class PixelBudgetExhausted(Exception):
    """A request that the decode budget cannot take (now or ever); the message says which."""


class PixelBudget:
    """At most `max_pixels` declared pixels being decoded at once, across all requests and protocols."""

    def __init__(
        self, max_pixels: int = DEFAULT_MAX_DECODED_PIXELS, max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS
    ):
        if max_pixels < 1:
            raise ValueError(f"the decoded-pixel budget must be at least 1 pixel, got {max_pixels}")
        self.max_pixels = max_pixels
        self.max_wait_seconds = max_wait_seconds
        self.in_flight = 0
        self._changed = threading.Condition()
        self._queue: collections.deque = collections.deque()  # tickets of waiting requests, first come first
        self._tickets = itertools.count()

    @property
    def waiting(self) -> int:
        """Requests waiting for room."""
        return len(self._queue)

    @contextlib.contextmanager
    def reserve(
        self, pixels: int, wait_seconds: Optional[float] = None, labels: Sequence[str] = ("", "", "")
    ) -> Iterator[None]:
        """Holds `pixels` of the budget for the duration of the block, waiting for them if need be; the wait and
        any refusal are recorded in the server's metrics under `labels` (model name, version, signature)."""
        if pixels <= 0:
            yield
            return
        if pixels > self.max_pixels:
            metrics.decode_refused(labels, "too_large")
            raise PixelBudgetExhausted(
                f"the request's images declare {megapixels(pixels)} of pixels, more than this server decodes "
                f"at once ({megapixels(self.max_pixels)}); send fewer or smaller images per request"
            )
        wait = self.max_wait_seconds if wait_seconds is None else min(wait_seconds, self.max_wait_seconds)
        started = time.monotonic()
        with self._changed:
            ticket = next(self._tickets)
            self._queue.append(ticket)
            admitted = self._changed.wait_for(
                lambda: self._queue[0] == ticket and self.in_flight + pixels <= self.max_pixels, max(wait, 0.0)
            )
            self._queue.remove(ticket)
            if admitted:
                self.in_flight += pixels
            self._changed.notify_all()  # the next in line may fit now, or may now be first
        if not admitted:
            metrics.decode_refused(labels, "timeout")
            raise PixelBudgetExhausted(
                f"the server is decoding its budget of {megapixels(self.max_pixels)} already; this request "
                f"({megapixels(pixels)}) waited {wait:g} s for room; retry later"
            )
        metrics.decode_waited(labels, time.monotonic() - started)
        try:
            yield
        finally:
            with self._changed:
                self.in_flight -= pixels
                self._changed.notify_all()


def megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:,.1f} megapixels"
