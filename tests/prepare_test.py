"""prepare: label mapping, split handling, patient-grouped validation carve, bad files, reuse."""
import glob
import json
import os
import shutil

import pytest
import tensorflow as tf

from pneumonia import prepare
from tests.conftest import copy_subset


def read_examples(folder):
    files = sorted(glob.glob(os.path.join(folder, "*.tfrecord.gz")))
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def feature(example, name):
    value = example.features.feature[name]
    return value.int64_list.value[0] if value.int64_list.value else value.bytes_list.value[0].decode()


@pytest.mark.parametrize("name, label, patient, pathogen", [
    ("person123_bacteria_456.jpeg", 1, "person123", "bacteria"),
    ("person45_virus_78.jpeg", 1, "person45", "virus"),
    ("IM-0115-0001.jpeg", 0, "IM-0115", "none"),
    ("NORMAL2-IM-0372-0001.jpeg", 0, "NORMAL2-IM-0372", "none"),
    ("rsna_Normal-4410.jpeg", 0, None, "none"),
    ("ieee8023_covid-19-pneumonia-7-PA.jpeg", 1, None, "unknown"),
])
def test_file_names_give_patient_and_pathogen(name, label, patient, pathogen):
    assert prepare.parse_patient_and_pathogen(name, label) == (patient, pathogen)


def test_source_needs_name_and_path():
    with pytest.raises(prepare.PrepareError, match="NAME=PATH"):
        prepare.Source.parse("/data/chest_xray")


def test_prepare_real_images(shared_data, tmp_path):
    data = copy_subset(shared_data, str(tmp_path / "raw"), {
        "chest_xray/train/NORMAL": 40, "chest_xray/train/PNEUMONIA": 40,
        "chest_xray/test/NORMAL": 5, "chest_xray/test/PNEUMONIA": 5,
        "external/NORMAL": 4, "external/PNEUMONIA": 4})
    out = str(tmp_path / "out")
    report = prepare.prepare([prepare.Source.parse(f"kermany={data}/chest_xray"),
                              prepare.Source.parse(f"external={data}/external")], out)
    assert report.files_seen == report.written == 98
    assert sorted(report.shards) == ["eval", "external", "test", "train"]

    splits = {split: read_examples(os.path.join(out, split)) for split in report.shards}
    for split, examples in splits.items():
        for example in examples:
            assert feature(example, "split") == split
            assert feature(example, "label") == (feature(example, "label_name") == "PNEUMONIA")
            assert feature(example, "label_name") in feature(example, "source_path")  # class folder -> label
            assert (feature(example, "height"), feature(example, "width"), feature(example, "channels")) == (224, 224, 1)
            image = example.features.feature["image"].bytes_list.value[0]
            source = os.path.join(data, "chest_xray" if split != "external" else "external",
                                  feature(example, "source_path"))
            assert image == open(source, "rb").read()  # encoded bytes as stored
    assert {feature(e, "dataset") for e in splits["external"]} == {"external"}
    assert {feature(e, "pathogen") for e in splits["external"] if feature(e, "label") == 1} == {"unknown"}
    # Validation is carved from train by whole patients, and has both classes.
    train_patients = {feature(e, "patient_id") for e in splits["train"]}
    eval_patients = {feature(e, "patient_id") for e in splits["eval"]}
    assert eval_patients and not train_patients & eval_patients
    assert {feature(e, "label") for e in splits["eval"]} == {0, 1}
    # Records are shuffled, not class by class.
    train_labels = [feature(e, "label") for e in splits["train"]]
    assert train_labels != sorted(train_labels) and train_labels != sorted(train_labels, reverse=True)


def test_bad_files_are_reported_not_lost(shared_data, tmp_path):
    data = copy_subset(shared_data, str(tmp_path / "raw"), {"external/NORMAL": 3, "external/PNEUMONIA": 3})
    real = sorted(glob.glob(f"{data}/external/NORMAL/*"))[0]
    blob = open(real, "rb").read()
    bad = {
        "NORMAL/empty.jpeg": b"",
        "NORMAL/truncated.jpeg": blob[: len(blob) // 3],
        "PNEUMONIA/text.jpeg": b"this is not an image\n",
        "PNEUMONIA/copy.jpeg": blob,  # an exact duplicate of a NORMAL image
        "OTHER/x.jpeg": blob[:10] + b"x",
        "loose.jpeg": blob,
    }
    for name, content in bad.items():
        os.makedirs(os.path.dirname(os.path.join(data, "external", name)), exist_ok=True)
        with open(os.path.join(data, "external", name), "wb") as f:
            f.write(content)
    report = prepare.prepare([prepare.Source.parse(f"external={data}/external")], str(tmp_path / "out"))
    reasons = {item["path"].split("/", 1)[1]: item["reason"] for item in report.quarantined}
    assert "empty" in reasons["NORMAL/empty.jpeg"]
    assert "decode" in reasons["NORMAL/truncated.jpeg"]
    assert "not a JPEG or PNG" in reasons["PNEUMONIA/text.jpeg"]
    assert "unknown class folder" in reasons["OTHER/x.jpeg"]
    assert "not at <class>/<file>" in reasons["loose.jpeg"]
    assert [d["path"] for d in report.duplicates] == ["external/PNEUMONIA/copy.jpeg"]
    assert report.written == 6
    saved = json.load(open(tmp_path / "out" / prepare.REPORT_NAME))
    assert saved["accounted"] and saved["files_seen"] == 12


def test_reuses_identical_input_and_refuses_a_different_one(shared_data, tmp_path):
    data = copy_subset(shared_data, str(tmp_path / "raw"), {"external/NORMAL": 2, "external/PNEUMONIA": 2})
    out = str(tmp_path / "out")
    sources = [prepare.Source.parse(f"external={data}/external")]
    prepare.prepare(sources, out)
    shard = os.path.join(out, "external", os.listdir(os.path.join(out, "external"))[0])
    before = os.stat(shard).st_mtime_ns
    prepare.prepare(sources, out)  # same input: nothing rewritten (keeps ExampleGen's cache valid)
    assert os.stat(shard).st_mtime_ns == before
    os.remove(sorted(glob.glob(f"{data}/external/NORMAL/*"))[0])
    with pytest.raises(prepare.PrepareError, match="different prepared dataset"):
        prepare.prepare(sources, out)
    assert prepare.prepare(sources, out, overwrite=True).written == 3


def test_missing_or_empty_source_is_an_error(tmp_path):
    with pytest.raises(prepare.PrepareError, match="does not exist"):
        prepare.prepare([prepare.Source("x", str(tmp_path / "nope"))], str(tmp_path / "out"))
    (tmp_path / "empty" / "NORMAL").mkdir(parents=True)
    with pytest.raises(prepare.PrepareError, match="no usable images"):
        prepare.prepare([prepare.Source("x", str(tmp_path / "empty"))], str(tmp_path / "out"))
