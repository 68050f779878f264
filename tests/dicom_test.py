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
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from fixtures import dicom_files as make
from fixtures.dicom_files import IDENTITY_WINDOW
from pneumonia.cli import main
from pneumonia.data import audit, prepare
from pneumonia.data import sources as data_sources
from serving import dicom
from tests.serving_fixtures import exported_models, model_base, served  # noqa: F401

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


@pytest.mark.parametrize(
    "build, reason",
    [
        (make.ct_slice, "modality CT is not a radiograph (CR, DX, DR)"),
        (make.multi_frame, "multi-frame image (2 frames): one radiograph per file expected"),
        (make.without_pixels, "no PixelData (not an image)"),
        (make.colour, "colour image (RGB, 3 samples per pixel): a grayscale radiograph is expected"),
        (make.mpeg2, "unsupported transfer syntax 1.2.840.10008.1.2.4.100 (MPEG2 Main Profile / Main Level)"),
        (lambda p: make.xray_dicom(p, BodyPartExamined="ABDOMEN"), "body part ABDOMEN is not the chest"),
        (
            lambda p: make.xray_dicom(p, ViewPosition="LL"),
            "lateral view (LL): the model reads frontal films (--allow-lateral to score it anyway)",
        ),
    ],
)
def test_what_must_not_be_scored_is_refused_with_one_line(xray, build, reason):
    with pytest.raises(dicom.DicomRefused) as refused:
        dicom.dicom_to_png(make.to_bytes(build(xray[1])))
    assert str(refused.value) == reason


@pytest.mark.parametrize(
    "name, reason",
    [  # files packaged with pydicom, written by other toolkits
        ("CT_small.dcm", "modality CT is not a radiograph (CR, DX, DR)"),
        ("MR_small_RLE.dcm", "modality MR is not a radiograph (CR, DX, DR)"),
        ("SC_rgb_jpeg.dcm", "colour image (RGB, 3 samples per pixel): a grayscale radiograph is expected"),
        (
            "examples_palette.dcm",
            "colour image (PALETTE COLOR, 1 sample per pixel): a grayscale radiograph is expected",
        ),
        ("rtdose.dcm", "multi-frame image (15 frames): one radiograph per file expected"),
        ("reportsi.dcm", "no PixelData (not an image)"),
        ("no_meta.dcm", "not a DICOM file (no 'DICM' after the 128-byte preamble)"),
    ],
)
def test_pydicoms_own_test_files_are_refused_for_their_reason(name, reason):
    path = get_testdata_file(name)
    assert path is not None and not path.startswith(("http:", "https:")), f"{name} is packaged with pydicom"
    with open(path, "rb") as f, pytest.raises(dicom.DicomRefused) as refused:
        dicom.dicom_to_png(f.read())
    assert str(refused.value) == reason


def test_lateral_is_scored_when_allowed_and_slice_attributes_are_read(xray):
    _, pixels = xray
    lateral = dicom.to_model_input(
        dicom.read(make.to_bytes(make.xray_dicom(pixels, ViewPosition="RL"))), allow_lateral=True
    )
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


# ---------------------------------------------------------------- prepare


@pytest.fixture(scope="module")
def hospital(shared_data, tmp_path_factory):
    """A class-folder source of DICOM files (several encodings, some to refuse) beside plain JPEGs.

    Returns (folder, {file: dataset}) for the DICOM files written."""
    root = tmp_path_factory.mktemp("hospital")
    films = {
        label: sorted(glob.glob(os.path.join(shared_data, "chest_xray", "test", label, "*.jpeg")))[:8]
        for label in ("NORMAL", "PNEUMONIA")
    }
    pixels = {path: make.xray_pixels(path) for paths in films.values() for path in paths}
    normal, pneumonia = ([pixels[p] for p in films[label]] for label in ("NORMAL", "PNEUMONIA"))
    with open(films["PNEUMONIA"][5], "rb") as f:
        jpeg = f.read()
    files = {
        "NORMAL/film1.dcm": make.xray_dicom(normal[0], patient="PAT-1001", name="SMITH^ANNA"),
        "NORMAL/film2": make.monochrome1(normal[1], patient="PAT-1001", name="SMITH^ANNA", ViewPosition="AP"),
        "NORMAL/twelve": make.twelve_bit(
            normal[2], patient="PAT-1002", name="JONES^BOB", PatientSex="M", PatientAge="034Y"
        ),
        "NORMAL/ct.dcm": make.ct_slice(normal[3]),
        "NORMAL/lateral.dcm": make.xray_dicom(normal[4], patient="PAT-1001", name="SMITH^ANNA", ViewPosition="LL"),
        "PNEUMONIA/film3.dcm": make.jpeg_lossless(pneumonia[0], patient="PAT-1003", name="BROWN^CAROL"),
        "PNEUMONIA/film4.dcm": make.jpeg_2000(pneumonia[1], patient="PAT-1004", name="GREEN^DAN", PatientAge="007Y"),
        "PNEUMONIA/film5.dcm": make.jpeg_baseline(jpeg, pneumonia[5], patient="PAT-1005", name="WHITE^EVE"),
        "PNEUMONIA/cine.dcm": make.multi_frame(pneumonia[2]),
        "PNEUMONIA/report.dcm": make.without_pixels(pneumonia[3]),
        "PNEUMONIA/video.dcm": make.mpeg2(pneumonia[4]),
        "PNEUMONIA/broken.dcm": make.corrupt_jpeg_2000(pneumonia[4]),
    }
    files["PNEUMONIA/film4-resent.dcm"] = make.resent(files["PNEUMONIA/film4.dcm"])
    twelve = files.pop("NORMAL/twelve")  # named by its SOP Instance UID, as PACS exports often are
    files[f"NORMAL/{twelve.SOPInstanceUID}"] = twelve
    for name, dataset in files.items():
        (root / name).parent.mkdir(exist_ok=True)
        (root / name).write_bytes(make.to_bytes(dataset))
    for label, paths in films.items():  # JPEGs beside the DICOM files
        for path in paths[6:]:
            with open(path, "rb") as source:
                (root / label / os.path.basename(path)).write_bytes(source.read())
    (root / "NORMAL" / "notes").write_text("not a DICOM file")
    return str(root), files


class _Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def prepared_hospital(hospital, tmp_path_factory):
    """`pneumonia prepare` of the hospital folder: (output folder, everything it printed and logged)."""
    import contextlib

    out = str(tmp_path_factory.mktemp("prepared") / "out")
    captured, printed = _Captured(), io.StringIO()
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.addHandler(captured)
    root_logger.setLevel(logging.DEBUG)
    try:
        with contextlib.redirect_stdout(printed):
            main(
                ["prepare", f"hospital={hospital[0]}", "--out", out, "--max-bad-fraction", "1", "--patient-salt", SALT]
            )
    finally:
        root_logger.removeHandler(captured)
        root_logger.setLevel(level)
    return out, printed.getvalue() + "\n".join(captured.lines)


def read_examples(out: str):
    records = []
    for path in sorted(glob.glob(os.path.join(out, "*", "*.tfrecord.gz"))):
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP"):
            example = tf.train.Example.FromString(raw.numpy())
            records.append(
                {
                    key: (value.bytes_list.value or value.int64_list.value)[0]
                    for key, value in example.features.feature.items()
                }
            )
    return {record["source_path"].decode(): record for record in records}


def test_prepare_writes_dicom_as_the_modules_png_with_hashed_patients(prepared_hospital, hospital):
    out, printed = prepared_hospital
    _, files = hospital
    report = audit.read_report(out)
    reasons = {item["path"]: item["reason"] for item in report["quarantined"]}
    assert reasons == {
        "hospital/NORMAL/ct.dcm": "modality CT is not a radiograph (CR, DX, DR)",
        "hospital/NORMAL/lateral.dcm": "lateral view (LL): the model reads frontal films (--allow-lateral to "
        "score it anyway)",
        "hospital/NORMAL/notes": "not a DICOM file (no 'DICM' after the 128-byte preamble)",
        "hospital/PNEUMONIA/broken.dcm": reasons["hospital/PNEUMONIA/broken.dcm"],
        "hospital/PNEUMONIA/cine.dcm": "multi-frame image (2 frames): one radiograph per file expected",
        "hospital/PNEUMONIA/report.dcm": "no PixelData (not an image)",
        "hospital/PNEUMONIA/video.dcm": "unsupported transfer syntax 1.2.840.10008.1.2.4.100 (MPEG2 Main Profile "
        "/ Main Level)",
    }
    assert reasons["hospital/PNEUMONIA/broken.dcm"].startswith(
        "cannot decode the pixel data (JPEG 2000 Image Compression (Lossless Only)): "
    )
    assert [(d["path"], d["duplicate_of"]) for d in report["duplicates"]] == [
        ("hospital/PNEUMONIA/film4.dcm", "hospital/PNEUMONIA/film4-resent.dcm")
    ]  # the first path is kept
    assert report["accounted"] and report["files_seen"] == 18 and report["written"] == 10
    assert report["formats"] == {"dicom": 6, "jpeg": 4}
    assert "written from DICOM: 6" in printed
    examples = read_examples(out)
    written = {name: dataset for name, dataset in files.items() if data_sources.recorded_path(name, SALT) in examples}
    assert len(written) == 6
    for name, dataset in written.items():
        example, expected = examples[data_sources.recorded_path(name, SALT)], dicom.to_model_input(dataset)
        assert example["image"] == expected.png and example["channels"] == 1
        assert example["patient_id"].decode() == f"hospital:{dicom.pseudonym(dataset.PatientID, SALT)}"
        assert (example["view_position"], example["sex"], example["age_band"]) == (
            expected.view_position.encode(),
            expected.sex.encode(),
            expected.age_band.encode(),
        )
    assert examples["NORMAL/film1.dcm"]["patient_id"] == examples["NORMAL/film2"]["patient_id"]  # one patient
    assert examples["NORMAL/film2"]["view_position"] == b"AP"
    uid_named = f"NORMAL/uid-{dicom.pseudonym(files_named_by_uid(files)[0], SALT)}"
    assert examples[uid_named]["age_band"] == b"18-39"
    jpeg_example = next(e for name, e in examples.items() if name.endswith(".jpeg"))
    assert (jpeg_example["view_position"], jpeg_example["sex"], jpeg_example["age_band"]) == (b"unknown",) * 3


def files_named_by_uid(files):
    return [name.split("/")[1] for name, dataset in files.items() if name.endswith(dataset.SOPInstanceUID)]


def test_no_identifying_value_reaches_records_report_or_logs(prepared_hospital, hospital):
    out, printed = prepared_hospital
    _, files = hospital
    identifying = {value for dataset in files.values() for value in make.identifying_values(dataset)}
    assert {"SMITH^ANNA", "PAT-1001", "19580314", "ACC100177"} <= identifying  # the test files hold them all
    written = [printed]
    for path in glob.glob(os.path.join(out, "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            written.append((gzip.decompress(data) if path.endswith(".gz") else data).decode("latin-1"))
    everything = "\n".join(written)
    for value in identifying:
        for form in {value, value.replace("^", " ")}:
            assert form not in everything, f"identifying value {form!r} was written"


# ---------------------------------------------------------------- predict


def test_predict_scores_dicom_exactly_as_the_png_the_module_makes(served, xray, tmp_path, capsys):
    _, pixels = xray
    paths = []
    for name, dataset in {
        "mono1.dcm": make.monochrome1(pixels),
        "twelve": make.twelve_bit(pixels),
        "j2k.dcm": make.jpeg_2000(pixels),
    }.items():
        (tmp_path / name).write_bytes(make.to_bytes(dataset))
        (tmp_path / f"{name}.png").write_bytes(dicom.dicom_to_png(make.to_bytes(dataset)))
        paths += [str(tmp_path / name), str(tmp_path / f"{name}.png")]
    main(["predict", *paths, "--server", f"127.0.0.1:{served.grpc_port}", "--json"])
    answers = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [a["image"] for a in answers] == paths
    for from_dicom, from_png in zip(answers[::2], answers[1::2]):
        assert {**from_dicom, "image": ""} == {**from_png, "image": ""}

    (tmp_path / "lateral.dcm").write_bytes(make.to_bytes(make.xray_dicom(pixels, ViewPosition="LL")))
    with pytest.raises(SystemExit) as refused:
        main(["predict", str(tmp_path / "lateral.dcm"), "--server", f"127.0.0.1:{served.grpc_port}"])
    assert str(refused.value.code) == (
        f"error: {tmp_path / 'lateral.dcm'}: lateral view (LL): the model reads "
        "frontal films (--allow-lateral to score it anyway)"
    )
    main(["predict", str(tmp_path / "lateral.dcm"), "--server", f"127.0.0.1:{served.grpc_port}", "--allow-lateral"])
    assert "lateral.dcm: " in capsys.readouterr().out


def test_allow_lateral_writes_lateral_films_marked_as_such(hospital, tmp_path):
    report = prepare.prepare(
        [data_sources.Source.parse(f"hospital={hospital[0]}")],
        str(tmp_path / "out"),
        max_bad_fraction=1.0,
        patient_salt=SALT,
        allow_lateral=True,
    )
    assert "hospital/NORMAL/lateral.dcm" not in {item["path"] for item in report["quarantined"]}
    assert report["written"] == 11 and report["formats"] == {"dicom": 7, "jpeg": 4}
    assert read_examples(str(tmp_path / "out"))["NORMAL/lateral.dcm"]["view_position"] == b"LATERAL"
