"""prepare's calibration split: carved by patient, stratified and seeded, or a site's own folder; accounted."""

import collections
import os

import pytest

from pneumonia.data import carve, prepare
from pneumonia.data import sources as data_sources
from tests.conftest import copy_subset
from tests.prepare_test import feature, read_examples

SUBSET = {
    "chest_xray/train/NORMAL": 10,
    "chest_xray/train/PNEUMONIA": 10,
    "chest_xray/test/NORMAL": 24,
    "chest_xray/test/PNEUMONIA": 24,
    "external/NORMAL": 6,
    "external/PNEUMONIA": 6,
}


@pytest.fixture(scope="module")
def raw(shared_data, tmp_path_factory):
    return copy_subset(shared_data, str(tmp_path_factory.mktemp("raw")), SUBSET)


def sources(raw, *extra):
    return [
        data_sources.Source.parse(f"kermany={raw}/chest_xray"),
        data_sources.Source.parse(f"external={raw}/external"),
        *(data_sources.Source.parse(text) for text in extra),
    ]


def by_split(out):
    """{split: [(patient, label, source path)]} as written."""
    found = collections.defaultdict(list)
    for split in os.listdir(out):
        if os.path.isdir(os.path.join(out, split)):
            for example in read_examples(os.path.join(out, split)):
                assert feature(example, "split") == split
                found[split].append(
                    (feature(example, "patient_id"), feature(example, "label"), feature(example, "source_path"))
                )
    return found


@pytest.fixture(scope="module")
def carved(raw, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("carved") / "out")
    return out, prepare.prepare(sources(raw), out, calibration_from="test", calibration_size=16)


def test_carved_images_leave_their_split_whole_patients_at_a_time(carved):
    out, report = carved
    written = by_split(out)
    calibration, test = written["calibration"], written["test"]
    assert len(calibration) + len(test) == 48 and report["accounted"]
    assert report["files_seen"] == report["written"] == sum(len(v) for v in written.values())
    assert not {p for p, _, _ in calibration} & {p for p, _, _ in test}
    assert not {path for _, _, path in calibration} & {path for _, _, path in test}
    assert report["counts"]["calibration"]["kermany"] == dict(
        collections.Counter(data_sources.LABEL_NAMES[label] for _, label, _ in calibration)
    )
    assert "16 images carved from test by patient" in report["calibration_policy"]


def test_carve_is_stratified_by_label(carved):
    out, _ = carved
    labels = collections.Counter(label for _, label, _ in by_split(out)["calibration"])
    largest_patient = max(
        collections.Counter(p for p, _, _ in by_split(out)["test"] + by_split(out)["calibration"]).values()
    )
    for label in (0, 1):  # half of 16 each, overshooting by less than one patient's images
        assert 8 <= labels[label] < 8 + largest_patient


def test_carve_is_seeded():
    images = [(f"p{i}", "kermany", i % 2) for i in range(200)]
    first = carve.choose_calibration_patients(images, 20, seed=1)
    assert first == carve.choose_calibration_patients(images, 20, seed=1)
    assert first != carve.choose_calibration_patients(images, 20, seed=2)
    chosen = collections.Counter(label for patient, _, label in images if patient in first)
    assert chosen == {0: 10, 1: 10}


def test_stratification_keeps_each_source_s_share():
    images = (
        [(f"r{i}", "rsna", 0) for i in range(60)]
        + [(f"i{i}", "ieee8023", 1) for i in range(30)]
        + [(f"i{i}n", "ieee8023", 0) for i in range(10)]
    )
    chosen = set(carve.choose_calibration_patients(images, 10, seed=0))
    strata = collections.Counter((source, label) for patient, source, label in images if patient in chosen)
    assert strata == {("rsna", 0): 6, ("ieee8023", 1): 3, ("ieee8023", 0): 1}


def test_a_site_folder_becomes_the_calibration_split(raw, tmp_path):
    out = str(tmp_path / "out")
    site = data_sources.Source.parse(f"calibration:site={raw}/external")
    report = prepare.prepare([data_sources.Source.parse(f"kermany={raw}/chest_xray"), site], out)
    examples = read_examples(os.path.join(out, "calibration"))
    assert {feature(e, "dataset") for e in examples} == {"site"} and len(examples) == 12
    assert {feature(e, "source") for e in examples} == {"ieee8023"}  # its file-name prefix, as in external
    assert report["calibration_policy"].startswith("own folder site") and report["accounted"]
    assert sorted(report["shards"]) == ["calibration", "eval", "test", "train"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"calibration_from": "train", "calibration_size": 5}, "never from the data that trains"),
        ({"calibration_from": "nowhere", "calibration_size": 5}, "no such split; splits to carve from: external, test"),
        ({"calibration_from": "external", "calibration_size": 12}, "has only 12 files"),
        ({"calibration_size": 5}, "needs --calibration-from"),
    ],
)
def test_bad_calibration_requests_fail_with_one_line_and_write_nothing(raw, tmp_path, options, message):
    with pytest.raises(data_sources.PrepareError, match=message):
        prepare.prepare(sources(raw), str(tmp_path / "out"), **options)
    assert not os.path.exists(tmp_path / "out")


def test_one_calibration_split_only(raw, tmp_path):
    with pytest.raises(data_sources.PrepareError, match="one calibration split only"):
        prepare.prepare(
            sources(raw, f"calibration:site={raw}/external"),
            str(tmp_path / "out"),
            calibration_from="test",
            calibration_size=4,
        )
    with pytest.raises(data_sources.PrepareError, match="unknown role 'holdout'"):
        data_sources.Source.parse(f"holdout:site={raw}/external")
