"""prepare: label mapping, splits, patient-grouped carve, bad input, leakage, determinism, reuse."""

import glob
import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pneumonia.data import audit, prepare
from pneumonia.data import sources as data_sources
from pneumonia.data.images import parse_patient_and_pathogen
from tests.conftest import copy_subset


def read_examples(folder):
    files = sorted(glob.glob(os.path.join(folder, "*.tfrecord.gz")))
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def feature(example, name):
    value = example.features.feature[name]
    return value.int64_list.value[0] if value.int64_list.value else value.bytes_list.value[0].decode()


def encode(image, fmt, **options):
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png_declaring(width, height, real_png):
    """A real PNG whose header claims another size (a decompression bomb's header)."""
    ihdr = struct.pack(">II", width, height) + real_png[24:29]
    chunk = b"IHDR" + ihdr
    return real_png[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + real_png[33:]


def write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)


def synthetic_xrays(root: str, relpaths) -> str:
    """Distinct small grayscale JPEGs at the given paths under root (Kermany names give the patients)."""
    rng = np.random.default_rng(0)
    for relpath in relpaths:
        write(
            os.path.join(root, relpath), encode(Image.fromarray(rng.integers(0, 256, (48, 40), dtype=np.uint8)), "JPEG")
        )
    return root


@pytest.mark.parametrize(
    "name, label, patient, pathogen",
    [
        ("person123_bacteria_456.jpeg", 1, "person123", "bacteria"),
        ("person45_virus_78.jpeg", 1, "person45", "virus"),
        ("IM-0115-0001.jpeg", 0, "IM-0115", "none"),
        ("NORMAL2-IM-0372-0001.jpeg", 0, "NORMAL2-IM-0372", "none"),
        ("rsna_Normal-4410.jpeg", 0, None, "none"),
        ("ieee8023_covid-19-pneumonia-7-PA.jpeg", 1, None, "unknown"),
    ],
)
def test_file_names_give_patient_and_pathogen(name, label, patient, pathogen):
    assert parse_patient_and_pathogen(name, label) == (patient, pathogen)


def test_source_needs_name_and_path():
    with pytest.raises(data_sources.PrepareError, match="NAME=PATH"):
        data_sources.Source.parse("/data/chest_xray")


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prepared")
    data = copy_subset(
        shared_data,
        str(tmp / "raw"),
        {
            "chest_xray/train/NORMAL": 40,
            "chest_xray/train/PNEUMONIA": 40,
            "chest_xray/test/NORMAL": 5,
            "chest_xray/test/PNEUMONIA": 5,
            "external/NORMAL": 4,
            "external/PNEUMONIA": 4,
        },
    )
    sources = [
        data_sources.Source.parse(f"kermany={data}/chest_xray"),
        data_sources.Source.parse(f"external={data}/external"),
    ]
    report = prepare.prepare(sources, str(tmp / "out"))
    return data, sources, str(tmp / "out"), report


def test_real_images_become_complete_examples(prepared):
    data, _, out, report = prepared
    assert report["files_seen"] == report["written"] == 98 and report["accounted"]
    assert sorted(report["shards"]) == ["eval", "external", "test", "train"]
    for split in report["shards"]:
        for example in read_examples(os.path.join(out, split)):
            assert feature(example, "split") == split
            assert feature(example, "label") == (feature(example, "label_name") == "PNEUMONIA")
            assert feature(example, "label_name") in feature(example, "source_path")  # class folder -> label
            assert (feature(example, "height"), feature(example, "width"), feature(example, "channels")) == (
                224,
                224,
                1,
            )
            root = os.path.join(data, "external" if split == "external" else "chest_xray")
            stored = open(os.path.join(root, feature(example, "source_path")), "rb").read()
            assert example.features.feature["image"].bytes_list.value[0] == stored  # bytes as stored
            assert feature(example, "dataset") == ("external" if split == "external" else "kermany")
            # The external folder pools sources, named by file-name prefix; Kermany's names carry none.
            expected_source = os.path.basename(feature(example, "source_path")).split("_")[0]
            assert feature(example, "source") == (expected_source if split == "external" else "kermany")


def test_validation_is_carved_by_patient_and_records_are_shuffled(prepared):
    _, _, out, report = prepared
    splits = {split: read_examples(os.path.join(out, split)) for split in ("train", "eval")}
    train_patients = {feature(e, "patient_id") for e in splits["train"]}
    eval_patients = {feature(e, "patient_id") for e in splits["eval"]}
    assert eval_patients and not train_patients & eval_patients
    assert {feature(e, "label") for e in splits["eval"]} == {0, 1}
    assert report["patients_in_train_and_eval"] == []
    train_labels = [feature(e, "label") for e in splits["train"]]
    assert train_labels != sorted(train_labels) and train_labels != sorted(train_labels, reverse=True)


def test_output_is_deterministic_and_reused(prepared, tmp_path):
    _, sources, out, _ = prepared
    again = str(tmp_path / "again")
    prepare.prepare(sources, again)
    for name in [audit.REPORT_NAME] + [s for shards in audit.read_report(out)["shards"].values() for s in shards]:
        assert open(os.path.join(out, name), "rb").read() == open(os.path.join(again, name), "rb").read(), name
    shard = os.path.join(again, audit.read_report(again)["shards"]["test"][0])
    before = os.stat(shard).st_mtime_ns
    prepare.prepare(sources, again)  # same input: nothing rewritten (keeps ExampleGen's cache valid)
    assert os.stat(shard).st_mtime_ns == before


def test_every_bad_file_is_accounted_for_with_a_reason(shared_data, tmp_path):
    data = copy_subset(shared_data, str(tmp_path / "raw"), {"external/NORMAL": 60, "external/PNEUMONIA": 60})
    root = os.path.join(data, "external")
    real_path = sorted(glob.glob(f"{root}/NORMAL/*"))[0]
    real = open(real_path, "rb").read()
    gray = Image.open(real_path)
    png = encode(gray, "PNG")
    quarantined = {
        "NORMAL/empty.jpeg": (b"", "empty"),
        "NORMAL/truncated.jpeg": (real[: len(real) // 3], "cannot decode JPEG"),
        "NORMAL/random.jpeg": (np.random.default_rng(0).bytes(5000), "not a JPEG or PNG"),
        "NORMAL/notes.jpeg": (b"patient notes, not an image\n", "not a JPEG or PNG"),
        "PNEUMONIA/error.jpg": (b"<!DOCTYPE html><html><body>404 Not Found</body></html>", "HTML"),
        "PNEUMONIA/cmyk.jpeg": (encode(gray.convert("CMYK"), "JPEG"), "unsupported pixel mode CMYK"),
        "PNEUMONIA/tiny.png": (encode(gray.resize((20, 40)), "PNG"), "too small: 20x40"),
        "PNEUMONIA/bomb.png": (png_declaring(20000, 20000, png), "exceeds the pixel budget of 100 megapixels"),
        "OTHER/x.jpeg": (real, "unknown class folder 'OTHER'"),
        "loose.jpeg": (real, "not at <class>/<file>"),
        "NORMAL/.hidden.jpeg": (real, "hidden file"),
        "NORMAL/readme.txt": (b"x", "not an image file name"),
    }
    accepted = {  # accepted and marked by `channels`
        "NORMAL/gray.png": (png, 1),
        "NORMAL/gray16.png": (encode(Image.fromarray(np.asarray(gray).astype(np.uint16) * 257), "PNG"), 1),
        "NORMAL/gray_alpha.png": (encode(gray.convert("LA"), "PNG"), 2),
        "PNEUMONIA/rgb.jpeg": (encode(gray.convert("RGB"), "JPEG"), 3),
        "PNEUMONIA/rgba.png": (encode(gray.convert("RGBA"), "PNG"), 4),
    }
    for name, (content, _) in {**quarantined, **accepted}.items():
        write(os.path.join(root, name), content)
    write(os.path.join(root, "PNEUMONIA", "copy.jpeg"), real)  # an exact duplicate of a NORMAL image
    os.symlink(str(tmp_path), os.path.join(root, "NORMAL", "outside"))  # a folder link leaving the source
    os.symlink(real_path, os.path.join(root, "PNEUMONIA", "link.jpeg"))

    report = prepare.prepare(
        [data_sources.Source.parse(f"external={root}")], str(tmp_path / "out"), max_bad_fraction=0.2
    )
    reasons = {item["path"].split("/", 1)[1]: item["reason"] for item in report["quarantined"]}
    for name, (_, reason) in quarantined.items():
        assert reason in reasons[name], (name, reasons.get(name))
    assert "symbolic link" in reasons["NORMAL/outside"] and "symbolic link" in reasons["PNEUMONIA/link.jpeg"]
    assert [(d["path"], d["duplicate_of"]) for d in report["duplicates"]] == [
        ("external/PNEUMONIA/copy.jpeg", f"external/NORMAL/{os.path.basename(real_path)}")
    ]
    assert report["written"] == 120 + len(accepted)
    assert report["accounted"] and report["files_seen"] == 120 + len(quarantined) + len(accepted) + 3
    examples = {feature(e, "source_path"): e for e in read_examples(str(tmp_path / "out" / "external"))}
    for name, (_, channels) in accepted.items():
        assert feature(examples[name], "channels") == channels
    saved = json.load(open(tmp_path / "out" / audit.REPORT_NAME))
    assert saved["accounted"] and len(saved["quarantined"]) == len(quarantined) + 2


def test_too_many_bad_files_fail_with_one_line_and_publish_nothing(shared_data, tmp_path):
    data = copy_subset(shared_data, str(tmp_path / "raw"), {"external/NORMAL": 5, "external/PNEUMONIA": 5})
    write(os.path.join(data, "external", "NORMAL", "empty.jpeg"), b"")
    out = str(tmp_path / "out")
    with pytest.raises(data_sources.PrepareError) as error:
        prepare.prepare([data_sources.Source.parse(f"external={data}/external")], out)
    assert "1 of 11 files quarantined, more than --max-bad-fraction 0.01: empty file (0 bytes) (1)" in str(error.value)
    assert "\n" not in str(error.value)
    assert not os.path.exists(out) and os.path.exists(os.path.join(out + ".rejected", audit.REPORT_NAME))


def test_leaks_across_splits_are_reported_and_strict_fails(shared_data, tmp_path):
    data = copy_subset(
        shared_data,
        str(tmp_path / "raw"),
        {
            "chest_xray/train/NORMAL": 12,
            "chest_xray/train/PNEUMONIA": 12,
            "chest_xray/test/NORMAL": 3,
            "chest_xray/test/PNEUMONIA": 3,
        },
    )
    leaked = sorted(glob.glob(f"{data}/chest_xray/test/NORMAL/*"))[0]
    write(os.path.join(data, "chest_xray", "train", "NORMAL", "leaked.jpeg"), open(leaked, "rb").read())
    sources = [data_sources.Source.parse(f"kermany={data}/chest_xray")]
    report = prepare.prepare(sources, str(tmp_path / "out"))
    assert [leak["path"] for leak in report["leaks"]] == ["kermany/train/NORMAL/leaked.jpeg"]  # test copy kept
    assert report["leaks"][0]["splits"] == ["test", "train"]
    with pytest.raises(data_sources.PrepareError, match="--strict: 1 identical file"):
        prepare.prepare(sources, str(tmp_path / "strict"), strict=True)


def test_official_val_is_kept_and_shared_patients_are_reported(shared_data, tmp_path):
    raw = str(tmp_path / "raw")
    copy_subset(
        shared_data, raw, {"chest_xray/train/PNEUMONIA": 2 * prepare.MIN_USABLE_VAL, "chest_xray/test/NORMAL": 2}
    )
    train = os.path.join(raw, "chest_xray", "train", "PNEUMONIA")
    names = sorted(os.listdir(train))
    val = os.path.join(raw, "chest_xray", "val", "PNEUMONIA")
    os.makedirs(val)
    in_val, in_train = names[::2], names[1::2]  # alternate files: some patients land on both sides
    for name in in_val:
        os.rename(os.path.join(train, name), os.path.join(val, name))
    sources = [data_sources.Source.parse(f"kermany={raw}/chest_xray")]
    report = prepare.prepare(sources, str(tmp_path / "out"))
    assert report["counts"]["eval"]["kermany"]["PNEUMONIA"] == prepare.MIN_USABLE_VAL
    assert "official val/" in report["eval_policy"]
    shared = {f"kermany:{parse_patient_and_pathogen(n, 1)[0]}" for n in in_val} & {
        f"kermany:{parse_patient_and_pathogen(n, 1)[0]}" for n in in_train
    }
    assert shared and report["patients_in_train_and_eval"] == sorted(shared)
    with pytest.raises(data_sources.PrepareError, match="--strict: .* patient"):
        prepare.prepare(sources, str(tmp_path / "strict"), strict=True)


def test_refuses_a_different_dataset_unless_overwrite(shared_data, tmp_path):
    data = copy_subset(shared_data, str(tmp_path / "raw"), {"external/NORMAL": 2, "external/PNEUMONIA": 2})
    out = str(tmp_path / "out")
    sources = [data_sources.Source.parse(f"external={data}/external")]
    prepare.prepare(sources, out)
    os.remove(sorted(glob.glob(f"{data}/external/NORMAL/*"))[0])
    with pytest.raises(data_sources.PrepareError, match="different prepared dataset"):
        prepare.prepare(sources, out)
    assert prepare.prepare(sources, out, overwrite=True)["written"] == 3


def test_missing_or_empty_source_is_an_error(tmp_path):
    with pytest.raises(data_sources.PrepareError, match="does not exist"):
        prepare.prepare([data_sources.Source("x", str(tmp_path / "nope"))], str(tmp_path / "out"))
    (tmp_path / "empty" / "NORMAL").mkdir(parents=True)
    with pytest.raises(data_sources.PrepareError, match="no images"):
        prepare.prepare([data_sources.Source("x", str(tmp_path / "empty"))], str(tmp_path / "out"))


def test_full_resolution_originals_are_written_as_stored(shared_data, tmp_path):
    """The untouched full-size Kermany files: accepted with their real geometry, bytes unchanged."""
    report = prepare.prepare([data_sources.Source.parse(f"originals={shared_data}/originals")], str(tmp_path / "out"))
    assert report["written"] == report["files_seen"] == 24
    for example in read_examples(str(tmp_path / "out" / "originals")):
        stored = open(os.path.join(shared_data, "originals", feature(example, "source_path")), "rb").read()
        assert example.features.feature["image"].bytes_list.value[0] == stored
        with Image.open(io.BytesIO(stored)) as image:
            assert (feature(example, "width"), feature(example, "height")) == image.size
        assert min(image.size) > 224


def test_every_evaluation_split_is_audited_for_patients_seen_in_train(tmp_path):
    """Kermany's test shares person IDs with train (person1_bacteria_* in train, person1_virus_* in test):
    the report lists them per evaluation split, and each record says whether its patient is in train."""
    train = [f"train/PNEUMONIA/person{i}_bacteria_{i}.jpeg" for i in range(1, 9)]
    train += [f"train/NORMAL/IM-{i:04d}-0001.jpeg" for i in range(1, 9)]
    test = [
        "test/PNEUMONIA/person1_virus_100.jpeg",
        "test/PNEUMONIA/person1_virus_101.jpeg",
        "test/PNEUMONIA/person99_virus_102.jpeg",
        "test/NORMAL/IM-0200-0001.jpeg",
    ]
    raw = synthetic_xrays(str(tmp_path / "raw"), train + test)
    out = str(tmp_path / "out")
    report = prepare.prepare([data_sources.Source.parse(f"kermany={raw}")], out, eval_fraction=0.25)
    carved = {feature(e, "patient_id") for e in read_examples(os.path.join(out, "eval"))}
    assert report["patients_shared_with_train"] == {"eval": [], "test": ["kermany:person1"]}
    assert report["images_of_patients_in_train"] == {"eval": 0, "test": 2}
    assert "test: 1 patient ID(s) also in train, 2 image(s)" in audit.summary(report)
    seen = {
        split: {
            feature(e, "source_path"): feature(e, "patient_in_train") for e in read_examples(os.path.join(out, split))
        }
        for split in ("train", "eval", "test")
    }
    assert set(seen["train"].values()) == {1} and set(seen["eval"].values()) == {0} and carved
    assert seen["test"] == {
        "test/PNEUMONIA/person1_virus_100.jpeg": 1,
        "test/PNEUMONIA/person1_virus_101.jpeg": 1,
        "test/PNEUMONIA/person99_virus_102.jpeg": 0,
        "test/NORMAL/IM-0200-0001.jpeg": 0,
    }


def test_a_report_whose_files_do_not_add_up_fails(prepared):
    """`accounted` is enforced: a file neither written, quarantined nor skipped as a duplicate is an error."""
    report = dict(prepared[3], written=prepared[3]["written"] - 1, accounted=False)  # one file lost
    with pytest.raises(data_sources.PrepareError, match="98 files seen, but 97 written .* do not add up"):
        audit.check_report(report, max_bad_fraction=0.01, strict=False)
