"""DICOM conversion at the cost of its decode (issue 24): the stored PNG decodes to exactly its pixels, and the
value-table windowing gives the bytes of windowing every pixel (fixtures/dicom_files.py keeps that as it was)."""

import glob
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pydicom.dataset import Dataset

from fixtures import dicom_files as make
from fixtures.dicom_files import IDENTITY_WINDOW
from serving import dicom

RNG_SEED = 24


@pytest.fixture(scope="module")
def films(shared_data):
    """Three real 224 px test films and one full-size original (more than one 64 KiB stored deflate block)."""
    paths = sorted(glob.glob(os.path.join(shared_data, "chest_xray", "test", "*", "*.jpeg")))[::200][:3]
    paths += sorted(glob.glob(os.path.join(shared_data, "originals", "*", "*")))[:1]
    return [make.xray_pixels(path) for path in paths]


def decoded_both_ways(png: bytes):
    """The PNG as PIL reads it (after verifying every chunk's CRC) and as the served model reads it."""
    Image.open(io.BytesIO(png)).verify()
    pil = np.asarray(Image.open(io.BytesIO(png)))
    return pil, tf.io.decode_png(png, channels=1).numpy()[..., 0]


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (1, 70_001), (2, 1), (3, 5), (17, 33), (256, 255), (301, 257)])
def test_the_png_decodes_to_exactly_random_pixels(shape):
    pixels = np.random.default_rng(RNG_SEED).integers(0, 256, shape, dtype=np.uint8)
    for read in decoded_both_ways(dicom.encode_png(pixels)):
        assert read.shape == shape and read.dtype == np.uint8
        np.testing.assert_array_equal(read, pixels)


def test_the_png_decodes_to_exactly_real_films_and_odd_crops(films):
    for film in films:
        for pixels in (film, film[:1], film[1:, 1:], np.ascontiguousarray(film[:, ::-1])):
            for read in decoded_both_ways(dicom.encode_png(pixels)):
                np.testing.assert_array_equal(read, pixels)


def lut_item(entries: int, first: int, values) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [entries, first, 16]
    item.add_new("LUTData", "US", [int(v) for v in values])
    return item


def signed_sixteen_bit(film: np.ndarray) -> Dataset:
    """Signed stored values around zero, a negative rescale slope, no window: the percentile window."""
    dataset = make.xray_dicom(film, PixelRepresentation=1, RescaleSlope=-0.7, RescaleIntercept=3.25)
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 16, 16, 15
    dataset.PixelData = (film.astype(np.int16) * 97 - 12_000).tobytes()
    return dataset


def thirty_two_bit(film: np.ndarray) -> Dataset:
    dataset = make.xray_dicom(film, WindowCenter=70_000, WindowWidth=90_000)
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 32, 32, 31
    dataset.PixelData = (film.astype(np.uint32) * 400 + 20_000).tobytes()
    return dataset


def with_voi_lut(film: np.ndarray) -> Dataset:
    dataset = make.twelve_bit(film)
    dataset.VOILUTSequence = [lut_item(4096, 0, np.sqrt(np.arange(4096)) * 1000)]
    return dataset


def with_modality_lut(film: np.ndarray) -> Dataset:
    dataset = make.twelve_bit(film)
    del dataset.RescaleSlope, dataset.RescaleIntercept, dataset.WindowCenter, dataset.WindowWidth
    dataset.ModalityLUTSequence = [lut_item(3000, 100, (np.arange(3000) * 7) % 4000)]  # not monotonic
    return dataset


CASES = {
    "8-bit, percentile": make.xray_dicom,
    "8-bit, identity window": lambda film: make.xray_dicom(film, **IDENTITY_WINDOW),
    "8-bit, narrow LINEAR window": lambda film: make.xray_dicom(film, WindowCenter=90.5, WindowWidth=37),
    "8-bit, SIGMOID window": lambda film: make.xray_dicom(
        film, WindowCenter=120, WindowWidth=80, VOILUTFunction="SIGMOID"
    ),
    "8-bit, flat film": lambda film: make.xray_dicom(np.full_like(film, 77)),
    "8-bit MONOCHROME1, percentile": make.monochrome1,
    "8-bit MONOCHROME1, identity window": lambda film: make.monochrome1(film, **IDENTITY_WINDOW),
    "8-bit signed": lambda film: make.xray_dicom(film, PixelRepresentation=1),
    "12-bit rescale, LINEAR_EXACT window": make.twelve_bit,
    "12-bit, VOI LUT": with_voi_lut,
    "12-bit, modality LUT, percentile": with_modality_lut,
    "16-bit signed, negative slope, percentile": signed_sixteen_bit,
    "32-bit, window": thirty_two_bit,
}


@pytest.mark.parametrize("build", CASES.values(), ids=CASES.keys())
def test_value_tables_give_the_bytes_of_windowing_every_pixel(films, build):
    for film in films:
        dataset = dicom.read(make.to_bytes(build(film)))
        expected, expected_windowing = make.per_pixel_8_bits(dataset)
        pixels, windowing = dicom.to_8_bits(dataset.pixel_array, dataset)
        assert windowing == expected_windowing and pixels.dtype == np.uint8
        np.testing.assert_array_equal(pixels, expected)


def test_an_8_bit_film_shown_as_stored_is_passed_through_without_a_pass(films):
    dataset = dicom.read(make.to_bytes(make.xray_dicom(films[0], **IDENTITY_WINDOW)))
    stored = dataset.pixel_array
    assert dicom.to_8_bits(stored, dataset)[0] is stored
    inverted = dicom.read(make.to_bytes(make.monochrome1(films[0], **IDENTITY_WINDOW)))
    assert dicom.to_8_bits(inverted.pixel_array, inverted)[0] is not inverted.pixel_array


def test_the_model_input_is_unchanged_on_a_full_size_film(films):
    """The whole path (decode, window, PNG) on the full-size film: the same pixels as before issue 24."""
    full_size = films[-1]
    for build in (make.xray_dicom, make.twelve_bit, make.monochrome1, make.jpeg_2000):
        data = make.to_bytes(build(full_size))
        before = make.pil_png(make.per_pixel_8_bits(dicom.read(data))[0], 1)
        after = dicom.dicom_to_png(data)
        np.testing.assert_array_equal(decoded_both_ways(after)[0], decoded_both_ways(before)[0])


@pytest.mark.parametrize("size", [1, 2, 3, 10, 199, 200, 201, 1001, 65_537])
def test_percentiles_from_counts_are_numpys_to_the_last_bit(size):
    rng = np.random.default_rng(size)
    percents = (0, 0.5, 1 / 3, 25, 50, 99.5, 100 - 1e-9, 100)
    for values in (
        rng.integers(0, 256, size),
        rng.integers(-3000, 3000, size) * 0.37 + 0.1,
        rng.normal(size=size) * 1e6,
        rng.choice(rng.normal(size=3), size),
    ):
        distinct, counts = np.unique(values, return_counts=True)
        shuffled = rng.permutation(len(distinct))  # any order of the values
        assert dicom.percentiles(distinct[shuffled], counts[shuffled], percents) == list(
            np.percentile(values, percents)
        )
