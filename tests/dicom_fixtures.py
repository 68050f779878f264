"""DICOM files made from the real X-rays, as a PACS would hold them (see tests/dicom_test.py).

`xray_dicom` wraps one real JPEG's pixels in a DX image with every identifying attribute filled in, so a
test can look for each of them where it must not appear. Variants change one thing each: photometric
interpretation, bit depth with rescale and window, transfer syntax, modality, view, frames, pixel data.
"""
import io

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.multival import MultiValue
from pydicom.uid import (CTImageStorage, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian,
                         JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, MPEG2MPML, PYDICOM_IMPLEMENTATION_UID,
                         generate_uid)

# Attributes that identify a person or a study: the tests look for each value wherever the code writes.
IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "OtherPatientIDs", "PatientBirthDate", "PatientBirthTime", "PatientAddress",
    "PatientTelephoneNumbers", "OtherPatientNames", "PatientMotherBirthName", "AccessionNumber",
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "StudyID",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "InstitutionName",
    "InstitutionAddress", "StationName", "DeviceSerialNumber", "MediaStorageSOPInstanceUID",
)

# The window that maps 8-bit stored values onto themselves (DICOM LINEAR: c=128, w=256).
IDENTITY_WINDOW = {"WindowCenter": 128, "WindowWidth": 256}


def identifying_values(dataset: Dataset) -> list:
    """Every identifying value the dataset holds, as text (what must never be written anywhere in clear)."""
    values = []
    for keyword in IDENTIFYING_KEYWORDS:
        for source in (dataset, dataset.get("file_meta") or Dataset()):
            value = source.get(keyword)
            if value not in (None, ""):
                values.extend(str(item) for item in (value if isinstance(value, MultiValue) else [value]))
    return sorted({value for value in values if value.strip()})


def xray_pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def xray_dicom(pixels: np.ndarray, patient: str = "PAT-0001", name: str = "DOE^JANE", **attributes) -> Dataset:
    """An uncompressed MONOCHROME2 DX chest PA radiograph holding `pixels`, identifiers all set."""
    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    dataset.SOPClassUID = DigitalXRayImageStorageForPresentation
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.PatientName, dataset.PatientID = name, patient
    dataset.PatientBirthDate, dataset.PatientSex, dataset.PatientAge = "19580314", "F", "066Y"
    dataset.AccessionNumber, dataset.StudyID = f"ACC{patient[-4:]}77", "STUDY9"
    dataset.InstitutionName, dataset.ReferringPhysicianName = "General Hospital Ward 7", "HOUSE^GREGORY"
    dataset.StudyDate, dataset.StudyTime, dataset.Modality = "20240105", "093000", "DX"
    dataset.BodyPartExamined, dataset.ViewPosition = "CHEST", "PA"
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.Rows, dataset.Columns = pixels.shape[:2]
    dataset.PixelRepresentation = 0
    _set_pixels(dataset, pixels.astype(np.uint8), 8)
    for keyword, value in attributes.items():
        setattr(dataset, keyword, value)
    return dataset


def _set_pixels(dataset: Dataset, pixels: np.ndarray, bits_stored: int) -> None:
    dataset.BitsStored = bits_stored
    dataset.BitsAllocated = 8 if bits_stored <= 8 else 16
    dataset.HighBit = bits_stored - 1
    dataset.PixelData = pixels.astype(np.uint8 if bits_stored <= 8 else np.uint16).tobytes()


def monochrome1(pixels: np.ndarray, **attributes) -> Dataset:
    """The same film stored inverted, as many CR plates write it."""
    return xray_dicom(255 - pixels, PhotometricInterpretation="MONOCHROME1", **attributes)


def twelve_bit(pixels: np.ndarray, **attributes) -> Dataset:
    """12-bit stored values with a modality rescale (2x - 1024) and a window giving back the 8-bit film."""
    stored = pixels.astype(np.uint16) * 16 + 8
    dataset = xray_dicom(pixels, **attributes)
    _set_pixels(dataset, stored, 12)
    dataset.RescaleSlope, dataset.RescaleIntercept, dataset.RescaleType = 2, -1024, "US"
    # output = 2 * stored - 1024 spans [-1008, 7168]; this window maps it back onto 0..255
    dataset.WindowCenter, dataset.WindowWidth = 2 * 2048 - 1024, 2 * 4096
    dataset.VOILUTFunction = "LINEAR_EXACT"
    return dataset


def jpeg_baseline(jpeg_bytes: bytes, pixels: np.ndarray, **attributes) -> Dataset:
    """The original JPEG file's bytes, encapsulated unchanged (how a JPEG-exporting modality stores it)."""
    dataset = xray_dicom(pixels, **attributes)
    dataset.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    dataset.PixelData = encapsulate([jpeg_bytes])
    dataset["PixelData"].VR = "OB"
    return dataset


def jpeg_2000(pixels: np.ndarray, **attributes) -> Dataset:
    dataset = xray_dicom(pixels, **attributes)
    dataset.compress(JPEG2000Lossless)  # pylibjpeg-openjpeg's encoder
    return dataset


def jpeg_lossless(pixels: np.ndarray, **attributes) -> Dataset:
    """JPEG Lossless SV1 (Process 14, first-order prediction); no pip package encodes it, so it is written
    here (ITU T.81 H.1) and decoded by pylibjpeg-libjpeg in the code under test."""
    dataset = xray_dicom(pixels, **attributes)
    dataset.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    dataset.PixelData = encapsulate([encode_jpeg_lossless(pixels.astype(np.uint8))])
    dataset["PixelData"].VR = "OB"
    return dataset


def encode_jpeg_lossless(pixels: np.ndarray) -> bytes:
    """8-bit single-component JPEG Lossless, predictor 1, one Huffman table of 5-bit codes per category."""
    height, width = pixels.shape
    values = pixels.astype(np.int32)
    predicted = np.empty_like(values)
    predicted[0, 0] = 128
    predicted[0, 1:] = values[0, :-1]  # first row: the left neighbour
    predicted[1:, 0] = values[:-1, 0]  # first column: the one above
    predicted[1:, 1:] = values[1:, :-1]  # predictor 1: the left neighbour
    differences = (values - predicted).ravel()
    categories = np.where(differences == 0, 0, np.floor(np.log2(np.abs(differences) + 0.5)).astype(int) + 1)
    # each pixel's code: its category in 5 bits, then `category` bits (negative differences as d + 2^c - 1)
    extra = np.where(differences > 0, differences, differences + (1 << categories) - 1)
    codes = (categories.astype(np.int64) << categories) | extra
    lengths = 5 + categories
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    bits = np.ones(int(lengths.sum()) + (-int(lengths.sum()) % 8), np.uint8)  # padding bits are 1s
    for position in range(int(lengths.max())):  # most significant bit first
        has = position < lengths
        bits[starts[has] + position] = (codes[has] >> (lengths[has] - 1 - position)) & 1
    packed = np.packbits(bits)
    entropy = np.insert(packed, np.flatnonzero(packed == 0xFF) + 1, 0).tobytes()  # byte stuffing
    counts = bytes([0, 0, 0, 0, 17] + [0] * 11)  # 17 codes (categories 0..16) of length 5
    huffman = b"\x00" + counts + bytes(range(17))
    frame = bytes([8]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    scan = bytes([1, 1, 0x00, 1, 0, 0])  # one component, table 0, predictor 1, Pt 0

    def segment(marker: int, payload: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload

    return (b"\xff\xd8" + segment(0xC4, huffman) + segment(0xC3, frame) + segment(0xDA, scan) + entropy
            + b"\xff\xd9")


def ct_slice(pixels: np.ndarray) -> Dataset:
    dataset = xray_dicom(pixels, Modality="CT", SOPClassUID=CTImageStorage)
    dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage
    return dataset


def multi_frame(pixels: np.ndarray) -> Dataset:
    dataset = xray_dicom(pixels)
    dataset.NumberOfFrames = 2
    dataset.PixelData = np.stack([pixels, pixels]).astype(np.uint8).tobytes()
    return dataset


def without_pixels(pixels: np.ndarray) -> Dataset:
    dataset = xray_dicom(pixels)
    del dataset.PixelData
    return dataset


def colour(pixels: np.ndarray) -> Dataset:
    dataset = xray_dicom(pixels, SamplesPerPixel=3, PhotometricInterpretation="RGB", PlanarConfiguration=0)
    dataset.PixelData = np.repeat(pixels[..., None], 3, axis=2).astype(np.uint8).tobytes()
    return dataset


def mpeg2(pixels: np.ndarray) -> Dataset:
    dataset = xray_dicom(pixels)
    dataset.file_meta.TransferSyntaxUID = MPEG2MPML
    dataset.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 60])
    dataset["PixelData"].VR = "OB"
    return dataset


def corrupt_jpeg_2000(pixels: np.ndarray) -> Dataset:
    """A JPEG 2000 file whose codestream was cut off in transit."""
    dataset = jpeg_2000(pixels)
    dataset.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(40)])
    return dataset


def resent(dataset: Dataset) -> Dataset:
    """The same film sent again: new instance UIDs, same pixels."""
    copy = dataset.copy()
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    copy.SeriesInstanceUID = generate_uid()
    return copy


def to_bytes(dataset: Dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
