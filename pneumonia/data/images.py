"""What one image file is: accepted (with its geometry) or refused with a one-line reason."""

import io
import os
import re
from typing import Optional, Tuple

from PIL import Image

from serving.pixels import declared_size
from trainer.pixel_budget import MAX_PIXELS, OVER_BUDGET

MIN_SIDE = 32
# The size check below reads the header; PIL's own bomb guard would raise an unhelpful error first.
Image.MAX_IMAGE_PIXELS = None

# Pixel modes TensorFlow's decoder (inside the exported model) reads, with their channel count.
CHANNELS = {"1": 1, "L": 1, "I;16": 1, "I;16B": 1, "I": 1, "LA": 2, "RGB": 3, "RGBA": 4}

_KERMANY_PNEUMONIA = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_KERMANY_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)


class BadImage(Exception):
    """A file that cannot be used as an X-ray; the message is the reason."""


def parse_patient_and_pathogen(file_name: str, label: int) -> Tuple[Optional[str], str]:
    """Kermany names encode patient and pathogen; other names give no patient (None)."""
    stem = os.path.splitext(file_name)[0]
    match = _KERMANY_PNEUMONIA.match(stem)
    if match:
        return match.group(1).lower(), match.group(2).lower()
    match = _KERMANY_NORMAL.match(stem)
    if match:
        return match.group(1).upper(), "none"
    return None, "none" if label == 0 else "unknown"


def inspect_image(data: bytes) -> Tuple[int, int, int]:
    """(height, width, channels) of a fully decodable JPEG/PNG the model can read, else BadImage."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    if data.lstrip()[:1] == b"<":
        raise BadImage("an HTML/XML text page, not an image")
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:  # PIL raises several types for non-images
        raise BadImage("not a JPEG or PNG image (unrecognised bytes)") from None
    if image.format not in ("JPEG", "PNG"):
        raise BadImage(f"unsupported image format {image.format} (expected JPEG or PNG)")
    width, height = declared_size(data)
    if width * height > MAX_PIXELS:  # the served model's budget, from the header, before any decoding
        raise BadImage(OVER_BUDGET.format(width, height, MAX_PIXELS // 1_000_000))
    width, height = image.size
    if min(width, height) < MIN_SIDE:
        raise BadImage(f"too small: {width}x{height} (minimum {MIN_SIDE} px a side)")
    if image.mode not in CHANNELS:
        raise BadImage(f"unsupported pixel mode {image.mode} (the model decodes grayscale, RGB and RGBA)")
    try:
        image.load()
    except Exception as error:
        raise BadImage(f"cannot decode {image.format}: {error}") from None
    return height, width, CHANNELS[image.mode]
