"""The result as a DICOM Secondary Capture: the film the model read, its Grad-CAM blended over it, and a
burned-in caption, for a viewer that shows images but not SRs (`pneumonia dicom-node --sc-dir`).

The film is the 8-bit PNG serving/dicom.py made (what the model scored), at its own size. The heatmap is
the served `gradcam` ([S/4, S/4] in [0, 1]) stretched bilinearly over the whole film, as the model
stretched the film to S x S, coloured with the web page's blue-to-red ramp and blended with an opacity
proportional to its value, so regions the model did not use keep their grey values.
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from serving.client import Prediction

# serving/web/app.js's heatColour stops: (value, RGB)
HEAT_STOPS = (
    (0.0, (49, 54, 149)),
    (0.35, (116, 173, 209)),
    (0.6, (254, 224, 144)),
    (0.8, (244, 109, 67)),
    (1.0, (165, 0, 38)),
)
MAX_OPACITY = 0.6  # of the heat colour where the map is 1: the film stays readable under the hottest region
CAPTION_HEIGHT_FRACTION = 1 / 40  # font size per image height, shrunk further until the line fits the width
MIN_FONT_PIXELS = 6
DISCLAIMER = "decision support, not a diagnosis"
# Only what DICOM needs to file the capture in the source's patient and study; nothing else is copied.
LINKING_KEYWORDS = (
    "SpecificCharacterSet",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)
SERIES_NUMBER = 901  # the SR series is 900


def caption(prediction: Prediction) -> str:
    guard = "; out of distribution: unreliable" if prediction.in_distribution is False else ""
    return (
        f"{prediction.label} p={prediction.probability:.3f} (threshold {prediction.threshold:.3f}){guard}; {DISCLAIMER}"
    )


def heat_colours(values: np.ndarray) -> np.ndarray:
    """[..., 3] float RGB of values in [0, 1] on the ramp, piecewise linear between the stops."""
    stops = np.array([at for at, _ in HEAT_STOPS])
    colours = np.array([colour for _, colour in HEAT_STOPS], dtype=np.float64)
    return np.stack([np.interp(values, stops, colours[:, channel]) for channel in range(3)], axis=-1)


def overlay(png: bytes, gradcam: np.ndarray, text: str) -> np.ndarray:
    """[H, W, 3] uint8: the film with the heatmap blended in and `text` burned in along the bottom."""
    film = Image.open(io.BytesIO(png)).convert("L")
    heat = Image.fromarray(np.clip(gradcam, 0.0, 1.0).astype(np.float32), mode="F")
    heat = heat.resize(film.size, Image.Resampling.BILINEAR)
    values = np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0)
    grey = np.asarray(film, dtype=np.float64)[..., np.newaxis]
    alpha = (MAX_OPACITY * values)[..., np.newaxis]
    blended = Image.fromarray(np.round(grey * (1 - alpha) + heat_colours(values) * alpha).astype(np.uint8), "RGB")
    _burn_in(blended, text)
    return np.asarray(blended)


def _burn_in(image: Image.Image, text: str) -> None:
    """White text with a black outline, bottom left, as large as fits on one line."""
    width, height = image.size
    margin = max(2, width // 100)
    size = max(MIN_FONT_PIXELS, round(height * CAPTION_HEIGHT_FRACTION))
    font = ImageFont.load_default(size)
    while size > MIN_FONT_PIXELS and font.getlength(text) > width - 2 * margin:
        size -= 1
        font = ImageFont.load_default(size)
    stroke = max(1, size // 8)
    ImageDraw.Draw(image).text(
        (margin, height - margin - stroke),
        text,
        font=font,
        fill=(255, 255, 255),
        anchor="ld",
        stroke_width=stroke,
        stroke_fill=(0, 0, 0),
    )


def secondary_capture(source: Dataset, pixels: np.ndarray, model_name: str, model_version: int) -> Dataset:
    """A highdicom SC image (DERIVED) of `pixels` in the source's study, as a new series, referencing the source."""
    reference = Dataset()
    for keyword in LINKING_KEYWORDS:
        if keyword in source:
            setattr(reference, keyword, source[keyword].value)
    # SCImage requires an orientation for a PATIENT image; the source's own is kept, or left empty (type 2).
    capture = hd.sc.SCImage.from_ref_dataset(
        reference,
        pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("L", "F"),
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="pneumonia-pipeline",
        manufacturer_model_name=model_name,
        software_versions=str(model_version),
    )
    capture.PatientOrientation = source.get("PatientOrientation", "")
    capture.SeriesDescription = "Pneumonia model Grad-CAM (decision support)"
    capture.DerivationDescription = f"Grad-CAM of model {model_name} version {model_version} over the model input"
    capture.BurnedInAnnotation = "YES"
    referenced = Dataset()
    referenced.ReferencedSOPClassUID = source.SOPClassUID
    referenced.ReferencedSOPInstanceUID = source.SOPInstanceUID
    capture.SourceImageSequence = [referenced]
    return capture
