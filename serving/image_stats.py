"""What the request log records of an image instead of the image: its size and intensity distribution.

One definition for both sides: the request log writes these numbers for every logged image, and `pneumonia
monitor` computes the same ones on the validation split to compare against, so a drift it reports is the
images', never two formulas'. X-rays are patient data; these numbers describe exposure and geometry, and no
picture can be rebuilt from them.
"""

import io
from typing import Dict, Iterable, Optional

import numpy as np
from PIL import Image
from tensorflow.core.example import example_pb2

from serving.pixels import declared_size

PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
INTENSITY_FEATURES = ("mean", "sd") + tuple(f"p{p:02d}" for p in PERCENTILES)
SIZE_FEATURES = ("width", "height", "encoded_bytes")
OOD_FEATURE = "ood_score"  # the model's own out-of-distribution distance, added when the model outputs it
FEATURES = SIZE_FEATURES + INTENSITY_FEATURES + (OOD_FEATURE,)
ID_FEATURE = "request_id"  # one image's id: the request's id (`/index` in a batch), or a hashed SOP Instance UID
FORMAT_FEATURE = "format"
# Intensities are measured on a thumbnail at most this many pixels a side (JPEG decodes straight to it):
# the distribution barely moves, and a 3000 x 3000 film costs a thumbnail's decode, not a film's.
THUMBNAIL_SIDE = 512
MAX_DECODED_PIXELS = 50_000_000  # above this (as declared), intensities are not measured: NaN


def image_statistics(data: bytes) -> Dict[str, float]:
    """Size (as the header declares it), bytes and 8-bit grayscale intensity statistics of encoded image bytes;
    intensities are NaN when the bytes do not decode or declare more than MAX_DECODED_PIXELS."""
    width, height = declared_size(data)
    statistics = {"width": float(width), "height": float(height), "encoded_bytes": float(len(data))}
    statistics.update(dict.fromkeys(INTENSITY_FEATURES, float("nan")))
    if not 0 < width * height <= MAX_DECODED_PIXELS:
        return statistics
    try:
        image = Image.open(io.BytesIO(data))
        image.draft("L", (THUMBNAIL_SIDE, THUMBNAIL_SIDE))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
        image = image.convert("L")
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    except Exception:  # PIL raises several types for undecodable bytes; the model refused them anyway
        return statistics
    counts = np.bincount(np.asarray(image, dtype=np.uint8).ravel(), minlength=256).astype(np.float64)
    total, levels = counts.sum(), np.arange(256, dtype=np.float64)
    mean = counts @ levels / total
    statistics.update(mean=float(mean), sd=float(np.sqrt(max(counts @ levels**2 / total - mean**2, 0.0))))
    # The inverted-CDF percentile (the smallest level holding that share of the pixels), from the histogram: a
    # quarter of np.percentile's cost, so the request log keeps up with the server.
    ranks = np.searchsorted(np.cumsum(counts), np.array(PERCENTILES) / 100 * total)
    statistics.update(zip(INTENSITY_FEATURES[2:], map(float, ranks)))
    return statistics


def image_format(data: bytes) -> str:
    for magic, name in ((b"\xff\xd8\xff", "jpeg"), (b"\x89PNG", "png"), (b"GIF8", "gif"), (b"BM", "bmp")):
        if data.startswith(magic):
            return name
    return "unknown"


def to_example(image_id: str, data: bytes, ood_score: Optional[float] = None) -> example_pb2.Example:
    """The logged stand-in for one image: its id, format and statistics (and the model's OOD score)."""
    example = example_pb2.Example()
    features = example.features.feature
    features[ID_FEATURE].bytes_list.value.append(image_id.encode("utf-8"))
    features[FORMAT_FEATURE].bytes_list.value.append(image_format(data).encode())
    for name, value in image_statistics(data).items():
        features[name].float_list.value.append(value)
    if ood_score is not None:
        features[OOD_FEATURE].float_list.value.append(float(ood_score))
    return example


def from_example(example: example_pb2.Example) -> Dict[str, object]:
    """An example written by `to_example` as {feature: value}: NaN for a statistic it lacks."""
    features = example.features.feature
    row: Dict[str, object] = {
        name: features[name].bytes_list.value[0].decode("utf-8") if name in features else ""
        for name in (ID_FEATURE, FORMAT_FEATURE)
    }
    row.update({name: _first(features[name].float_list.value) if name in features else np.nan for name in FEATURES})
    return row


def _first(values: Iterable[float]) -> float:
    return next(iter(values), float("nan"))
