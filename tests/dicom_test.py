"""DICOM in: the shared module, prepare, and predict, on DICOM files made from the real X-rays."""
import glob
import gzip
import io
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pydicom.dataset import Dataset

from pneumonia import prepare
from pneumonia.cli import main
from serving import dicom
from tests import dicom_fixtures as make
from tests.dicom_fixtures import IDENTITY_WINDOW

SALT = "test-salt"


@pytest.fixture(scope="module")
def xray(shared_data):
    """One real test X-ray: (its JPEG bytes, its 8-bit pixels)."""
    path = sorted(glob.glob(os.path.join(shared_data, "chest_xray", "test", "PNEUMONIA", "*.jpeg")))[0]
    with open(path, "rb") as f:
        return f.read(), make.xray_pixels(path)


def model_pixels(dataset, **options) -> np.ndarray:
    """What the model would see: the module's PNG (made from the file's bytes) decoded."""
    png = dicom.dicom_to_png(make.to_bytes(dataset), **options)
    return np.asarray(Image.open(io.BytesIO(png)))


def test_every_encoding_and_photometric_gives_back_the_film(xray):
    jpeg, pixels = xray
    exact = {
        "MONOCHROME2": make.xray_dicom(pixels, **IDENTITY_WINDOW),
        "MONOCHROME1 (inverted)": make.monochrome1(pixels, **IDENTITY_WINDOW),
        "12-bit, rescale 2x-1024, window": make.twelve_bit(pixels),
        "JPEG lossless SV1": make.jpeg_lossless(pixels, **IDENTITY_WINDOW),
        "JPEG 2000 lossless": make.jpeg_2000(pixels, **IDENTITY_WINDOW),
    }
    for name, dataset in exact.items():
        np.testing.assert_array_equal(model_pixels(dataset), pixels, err_msg=name)
    # JPEG baseline: the original file encapsulated; decoders may round one level apart
    decoded = model_pixels(make.jpeg_baseline(jpeg, pixels, **IDENTITY_WINDOW)).astype(int)
    assert np.abs(decoded - pixels).max() <= 1


def test_without_a_window_a_percentile_window_stretches_the_film(xray):
    _, pixels = xray
    narrow = (pixels // 4 + 100).astype(np.uint8)  # a washed-out film: values 100..163
    converted = dicom.to_model_input(dicom.read(make.to_bytes(make.xray_dicom(narrow))))
    stretched = np.asarray(Image.open(io.BytesIO(converted.png)))
    assert converted.windowing == "percentile"
    assert stretched.min() == 0 and stretched.max() == 255
    assert np.corrcoef(stretched.ravel(), pixels.ravel())[0, 1] > 0.99  # same picture, not inverted


def test_a_voi_lut_sequence_wins_over_the_window(xray):
    _, pixels = xray
    dataset = make.xray_dicom(pixels, WindowCenter=10, WindowWidth=2)  # would saturate nearly everything
    lut = Dataset()
    lut.LUTDescriptor = [256, 0, 8]
    lut.add_new("LUTData", "US", list(range(255, -1, -1)))  # an inverting LUT
    dataset.VOILUTSequence = [lut]
    converted = dicom.to_model_input(dicom.read(make.to_bytes(dataset)))
    assert converted.windowing == "voi lut"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(converted.png))), 255 - pixels)


@pytest.mark.parametrize("build, reason", [
    (make.ct_slice, "modality CT is not a radiograph (CR, DX, DR)"),
    (make.multi_frame, "multi-frame image (2 frames): one radiograph per file expected"),
    (make.without_pixels, "no PixelData (not an image)"),
    (make.colour, "colour image (RGB, 3 samples per pixel): a grayscale radiograph is expected"),
    (make.mpeg2, "unsupported transfer syntax 1.2.840.10008.1.2.4.100 (MPEG2 Main Profile / Main Level)"),
    (lambda p: make.xray_dicom(p, BodyPartExamined="ABDOMEN"), "body part ABDOMEN is not the chest"),
    (lambda p: make.xray_dicom(p, ViewPosition="LL"),
     "lateral view (LL): the model reads frontal films (--allow-lateral to score it anyway)"),
])
def test_what_must_not_be_scored_is_refused_with_one_line(xray, build, reason):
    with pytest.raises(dicom.DicomRefused) as refused:
        dicom.dicom_to_png(make.to_bytes(build(xray[1])))
    assert str(refused.value) == reason


def test_lateral_is_scored_when_allowed_and_slice_attributes_are_read(xray):
    _, pixels = xray
    lateral = dicom.to_model_input(dicom.read(make.to_bytes(make.xray_dicom(pixels, ViewPosition="RL"))),
                                   allow_lateral=True)
    assert (lateral.view_position, lateral.sex, lateral.age_band) == ("LATERAL", "F", "65-79")
    child = make.xray_dicom(pixels, ViewPosition="AP", PatientSex="M", PatientAge="018M")
    assert (dicom.view_position(child), dicom.sex(child), dicom.age_band(child)) == ("AP", "M", "0-4")
    del child.PatientAge, child.PatientSex  # then the age comes from the birth and study dates
    assert (dicom.sex(child), dicom.age_band(child)) == ("unknown", "65-79")
    with pytest.raises(dicom.DicomRefused, match="^not a DICOM file"):
        dicom.read(b"\xff\xd8\xff" + bytes(200))


def test_pseudonyms_are_keyed_and_stable():
    assert dicom.pseudonym("PAT-1", "a") == dicom.pseudonym("PAT-1", "a") != dicom.pseudonym("PAT-1", "b")
    assert "PAT-1" not in dicom.pseudonym("PAT-1", "a") and len(dicom.pseudonym("PAT-1", "a")) == 16
