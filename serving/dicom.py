"""DICOM -> the model's input: one 8-bit grayscale PNG, or a one-line refusal.

Shared by `pneumonia prepare`, `pneumonia predict`, the REST server and `pneumonia dicom-node`, so every
path turns the same DICOM into the same bytes. The steps, in order: refuse what a chest X-ray classifier
must not score (checked from the header, before decoding); decode the pixel data (uncompressed, RLE, JPEG
baseline/extended/lossless, JPEG-LS, JPEG 2000: whatever pydicom has a decoder for here); apply the modality
rescale (slope/intercept or Modality LUT); apply the VOI LUT, else the first window (centre/width, with its
VOI LUT function), else a robust percentile window; invert MONOCHROME1; encode the 8-bit result as PNG, the
bytes `predict_images` already takes, so the served model is unchanged. The steps after decoding run once per
possible stored value, not once per pixel (`to_8_bits`), and the PNG is written uncompressed (`encode_png`), so
on a full-size film they cost a few milliseconds (bench/dicom_bench.py --originals).

Only non-identifying attributes leave this module (view position, sex, age band); identifiers are exposed
only as keyed hashes (`pseudonym`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
import math
import os
import re
import struct
import zlib
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

PREAMBLE_BYTES = 128
MAGIC = b"DICM"  # follows the 128-byte preamble of every DICOM Part 10 file
ACCEPTED_MODALITIES = ("CR", "DX", "DR")  # DR is not a DICOM term, but some digital radiography vendors write it
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL")  # ViewPosition defined terms LL/RL, plus vendors' spellings
FRONTAL_VIEWS = ("PA", "AP")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Stored deflate blocks: writing the PNG and reading it back are copies of the pixels (~1.4 and ~0.8 ms a
# full-size film, where PIL at level 1, adaptive row filters then deflate, took ~44 and ~18 ms). The price: the
# PNG is as large as the raw pixels (an uncompressed DICOM's pixel data already is), twice PIL's level 1.
PNG_COMPRESS_LEVEL = 0
PERCENTILE_WINDOW = (0.5, 99.5)  # without a VOI in the file: clip the extreme 0.5% at each end
# Upper edges (in years) of the age bands a review board slices on; the last band is open.
AGE_BANDS = ((5, "0-4"), (18, "5-17"), (40, "18-39"), (65, "40-64"), (80, "65-79"))
OLDEST_BAND = "80+"
UNKNOWN = "unknown"
# The key of `pseudonym` when none is given. Public, so it hides identifiers only from a casual reader:
# a hospital sets its own secret (prepare --patient-salt, dicom-node --uid-salt, or the environment).
DEFAULT_SALT = "pneumonia-pipeline"


class DicomRefused(Exception):
    """A file that must not be scored as a chest X-ray; the message is the one-line reason."""


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """What a DICOM gives the model and the slices: the PNG bytes and non-identifying attributes only."""

    png: bytes
    view_position: str  # PA, AP, LATERAL (only with allow_lateral) or unknown
    sex: str  # F, M, O or unknown
    age_band: str  # one of AGE_BANDS' names, OLDEST_BAND, or unknown
    windowing: str  # how the 8 bits were chosen: "voi lut", "window", or "percentile"


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file: 128-byte preamble, then 'DICM'."""
    return data[PREAMBLE_BYTES : PREAMBLE_BYTES + len(MAGIC)] == MAGIC


def read(data: bytes) -> Dataset:
    """Parses a DICOM Part 10 file's bytes; DicomRefused when it is not one."""
    if not is_dicom(data):
        raise DicomRefused("not a DICOM file (no 'DICM' after the 128-byte preamble)")
    try:
        return pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError, KeyError, TypeError) as error:
        raise DicomRefused(f"unreadable DICOM: {_one_line(error)}") from None


def pseudonym(value: str, salt: str) -> str:
    """A keyed hash (HMAC-SHA256, first 16 hex digits) of an identifier: stable for one salt, not reversible
    without it."""
    return hmac.new(salt.encode("utf-8"), value.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def check(dataset: Dataset, allow_lateral: bool = False) -> None:
    """Raises DicomRefused (one line) for anything a chest X-ray classifier must not score; reads the header
    only, so it is cheap enough to run before decoding (and inside a C-STORE handler)."""
    if "PixelData" not in dataset:
        raise DicomRefused("no PixelData (not an image)")
    syntax = dataset.file_meta.get("TransferSyntaxUID") if dataset.get("file_meta") else None
    if syntax is None:
        raise DicomRefused("no TransferSyntaxUID in the file meta information")
    if not _decodable(syntax):
        raise DicomRefused(f"unsupported transfer syntax {syntax} ({syntax.name or 'unknown'})")
    frames = int(dataset.get("NumberOfFrames") or 1)
    if frames > 1:
        raise DicomRefused(f"multi-frame image ({frames} frames): one radiograph per file expected")
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    samples = int(dataset.get("SamplesPerPixel") or 1)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomRefused(
            f"colour image ({photometric or 'no PhotometricInterpretation'}, {samples} "
            f"sample{'s' if samples > 1 else ''} per pixel): a grayscale radiograph is expected"
        )
    modality = str(dataset.get("Modality", "")).upper()
    if modality not in ACCEPTED_MODALITIES:
        raise DicomRefused(f"modality {modality or '(none)'} is not a radiograph ({', '.join(ACCEPTED_MODALITIES)})")
    body_part = str(dataset.get("BodyPartExamined", "")).strip().upper()
    if body_part and body_part not in CHEST_BODY_PARTS:
        raise DicomRefused(f"body part {body_part} is not the chest")
    if view_position(dataset) == "LATERAL" and not allow_lateral:
        raise DicomRefused(
            f"lateral view ({dataset.get('ViewPosition')}): the model reads frontal films "
            "(--allow-lateral to score it anyway)"
        )


def to_model_input(dataset: Dataset, allow_lateral: bool = False) -> ModelInput:
    """The checked, decoded, windowed 8-bit PNG and the slice attributes (see module docstring)."""
    check(dataset, allow_lateral)
    pixels, windowing = to_8_bits(_stored_pixels(dataset), dataset)
    return ModelInput(encode_png(pixels), view_position(dataset), sex(dataset), age_band(dataset), windowing)


def dicom_to_png(data: bytes, allow_lateral: bool = False) -> bytes:
    """Bytes of a DICOM file -> the PNG the model takes; DicomRefused otherwise."""
    return to_model_input(read(data), allow_lateral).png


def declared_pixels(dataset: Dataset) -> int:
    """Pixels one frame's decode allocates (Rows x Columns), from the header: what a server charges against
    its decode budget before decoding (`check` has already refused several frames)."""
    return int(dataset.get("Rows") or 0) * int(dataset.get("Columns") or 0)


def _stored_pixels(dataset: Dataset) -> np.ndarray:
    """The decoded frame, as stored (before any rescale); DicomRefused when it cannot be decoded."""
    try:
        stored = dataset.pixel_array
    except Exception as error:  # the decoders raise many types for corrupt or truncated data
        syntax = dataset.file_meta.TransferSyntaxUID
        raise DicomRefused(f"cannot decode the pixel data ({syntax.name}): {_one_line(error)}") from None
    if stored.ndim != 2:
        raise DicomRefused(f"unexpected pixel array shape {stored.shape}: one grayscale frame expected")
    return stored


def to_8_bits(stored: np.ndarray, dataset: Dataset) -> Tuple[np.ndarray, str]:
    """The 8-bit film and how it was windowed: modality rescale, VOI, MONOCHROME1 inversion (lowest is white).

    Each step maps one stored value to one output value, so the steps run in float64 on every value the pixels
    can hold (256 or 65,536 of them; for wider types, those present) and the pixels look the result up: the
    bytes of mapping each pixel, for one lookup, or none when an 8-bit film is shown as stored. Only the
    percentile window reads the whole film, through the count of each value."""
    values, index = _value_table(stored)
    rescaled = pydicom.pixels.apply_modality_lut(values, dataset).astype(np.float64)
    table, windowing = _apply_voi(rescaled, dataset, lambda: np.bincount(index.ravel(), minlength=len(values)))
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        table = 255 - table
    if stored.dtype == np.uint8 and np.array_equal(table, values):
        return stored, windowing
    return np.take(table, index), windowing


def _value_table(stored: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(the values a pixel can hold, each pixel's position among them). 8 and 16 bits: every value of the type,
    ordered by its unsigned bit pattern, so the pixels viewed unsigned are their own positions (no pass over
    them); wider types: the values present."""
    if stored.dtype.itemsize <= 2:
        unsigned = np.dtype(f"u{stored.dtype.itemsize}")
        return np.arange(1 << 8 * unsigned.itemsize, dtype=unsigned).view(stored.dtype), stored.view(unsigned)
    values, index = np.unique(stored, return_inverse=True)
    return values, index.reshape(stored.shape)


def _apply_voi(values: np.ndarray, dataset: Dataset, counts: Callable[[], np.ndarray]):
    """The VOI LUT, else the first window, else the percentile window (of the pixels: `counts` gives how many
    hold each of `values`), mapped onto 0..255."""
    if "VOILUTSequence" in dataset:
        entries, first = (int(v) for v in dataset.VOILUTSequence[0].LUTDescriptor[:2])
        # the table's own output range (its bit depth is often misdeclared), read through pydicom
        table = pydicom.pixels.apply_voi(np.arange(first, first + (entries or 65536)), dataset)
        lut_output = pydicom.pixels.apply_voi(np.rint(values).astype(np.int64), dataset)  # a LUT is indexed
        return scale_to_8_bits(lut_output.astype(np.float64), float(table.min()), float(table.max())), "voi lut"
    if "WindowCenter" in dataset and "WindowWidth" in dataset:
        centre, width = first_value(dataset.WindowCenter), first_value(dataset.WindowWidth)
        if width >= 1:
            function = str(dataset.get("VOILUTFunction", "LINEAR")).upper()
            return window(values, centre, width, function), "window"
    low, high = percentiles(values, counts(), PERCENTILE_WINDOW)
    return scale_to_8_bits(values, low, high), "percentile"


def percentiles(values: np.ndarray, counts: np.ndarray, percents: Sequence[float]) -> list:
    """np.percentile of the pixels (its default linear method, to the last bit) from how many pixels hold each
    of `values`: no sorted float copy of the film. Ranks are 0-based, as numpy's virtual indexes are."""
    present = counts > 0
    order = np.argsort(values[present], kind="stable")
    ordered, cumulative = values[present][order], np.cumsum(counts[present][order])
    last = int(cumulative[-1]) - 1

    def nth(rank: int) -> float:
        return float(ordered[np.searchsorted(cumulative, min(rank, last), side="right")])

    results = []
    for percent in percents:
        position = last * (percent / 100)
        below = math.floor(position)
        low, high, gamma = nth(below), nth(below + 1), position - below
        # numpy's _lerp: from the nearer end, so that gamma 1 gives `high` exactly
        results.append(high - (high - low) * (1 - gamma) if gamma >= 0.5 else low + (high - low) * gamma)
    return results


def window(values: np.ndarray, centre: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2: LINEAR, LINEAR_EXACT and SIGMOID windows onto 0..255."""
    if function == "SIGMOID":
        return _round(255.0 / (1.0 + np.exp(-4.0 * (values - centre) / width)))
    if function == "LINEAR_EXACT":
        return scale_to_8_bits(values, centre - width / 2, centre + width / 2)
    # LINEAR: the standard's half-pixel offsets, (x - (c - 0.5)) / (w - 1) + 0.5
    return scale_to_8_bits(values, centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2)


def scale_to_8_bits(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:  # a flat image or window: all black, never a division by zero
        return np.zeros(values.shape, np.uint8)
    return _round(np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0)


def _round(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of `pixels` (2-D uint8): every row unfiltered (filter type 0), the zlib stream at
    PNG_COMPRESS_LEVEL. numpy and zlib write it in one copy of the pixels each; PIL tries filters per row."""
    height, width = pixels.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # bit depth 8, grayscale, no interlace
    return (
        PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows, PNG_COMPRESS_LEVEL))
        + _png_chunk(b"IEND", b"")
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """Length, type, data, and the CRC-32 of type and data (PNG spec 5.3)."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def first_value(value) -> float:
    return float(value[0] if isinstance(value, pydicom.multival.MultiValue) else value)


def _decodable(syntax: pydicom.uid.UID) -> bool:
    try:
        return pydicom.pixels.get_decoder(syntax).is_available
    except NotImplementedError:
        return False


def view_position(dataset: Dataset) -> str:
    """PA, AP, LATERAL or unknown, from ViewPosition."""
    value = str(dataset.get("ViewPosition", "")).strip().upper()
    if value in FRONTAL_VIEWS:
        return value
    return "LATERAL" if value in LATERAL_VIEWS else UNKNOWN


def sex(dataset: Dataset) -> str:
    value = str(dataset.get("PatientSex", "")).strip().upper()
    return value if value in ("F", "M", "O") else UNKNOWN


def age_band(dataset: Dataset) -> str:
    """The band of PatientAge (`045Y`, `006M`, `003W`, `010D`), else of StudyDate - PatientBirthDate."""
    years = _age_years(dataset)
    if years is None:
        return UNKNOWN
    return next((name for upper, name in AGE_BANDS if years < upper), OLDEST_BAND)


def _age_years(dataset: Dataset) -> Optional[float]:
    match = re.fullmatch(r"(\d{1,3})([DWMY])", str(dataset.get("PatientAge", "")).strip().upper())
    if match:
        return int(match[1]) / {"D": 365.25, "W": 52.18, "M": 12, "Y": 1}[match[2]]
    birth, study = str(dataset.get("PatientBirthDate", "")), str(dataset.get("StudyDate", ""))
    if re.fullmatch(r"\d{8}", birth) and re.fullmatch(r"\d{8}", study) and study >= birth:
        return float(int(study[:4]) - int(birth[:4]) - int(study[4:] < birth[4:]))
    return None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def file_name_is_dicom(name: str) -> bool:
    """Names prepare reads as DICOM: `.dcm`/`.dicom`, no extension, or a UID-like numeric one (`1.2.840...`)."""
    suffix = os.path.splitext(name)[1].lower()
    return suffix in (".dcm", ".dicom") or suffix == "" or suffix[1:].isdigit()
