"""Image folders -> gzipped TFRecords of tf.train.Example, one folder per split, plus a report.

A SOURCE is `NAME=PATH`. A PATH with `train/` (and optionally `val/`, `test/`) is the Kaggle layout:
its splits are kept, and validation (`eval`) is carved from train by patient when `val/` is too small
to select on. A PATH with only class folders (`NORMAL/`, `PNEUMONIA/`) becomes an evaluation-only
split named NAME. Every file ends up written, quarantined with a reason, or skipped as a duplicate.

DICOM files (`.dcm`, no extension, or a numeric UID-like one) are read beside JPEG/PNG: serving/dicom.py
refuses what must not be scored and turns the rest into the 8-bit PNG the model takes. Their PatientID is
stored only as a keyed hash (`patient_salt`), with view position, sex and age band; no other DICOM attribute
is written.

A site's labelled sample (the split `calibration`, where the ThresholdCalibrator chooses the operating
threshold) is either its own class-folder SOURCE with the role prefix `calibration:NAME=PATH`, or carved
from an evaluation-only or test split (`calibration_from`, `calibration_size`): whole patients, stratified
by source and label, seeded; the carved images leave the split they came from.

The driver lists files (metadata only); reading, hashing, decoding, de-duplication, the patient carve
and the shard writing run as an Apache Beam pipeline (DirectRunner by default; `beam_args` pass
through, e.g. `--runner=DataflowRunner`). Output is deterministic: the same input gives byte-identical
shards and report.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.config import CALIBRATION_SPLIT, absolute_uri
from pneumonia.images import BadImage, inspect_image, parse_patient_and_pathogen
from serving import dicom

LABELS = {"NORMAL": 0, "PNEUMONIA": 1}
LABEL_NAMES = {v: k for k, v in LABELS.items()}
KAGGLE_SPLITS = {"train": "train", "val": "eval", "test": "test"}
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
# The official Kaggle val/ holds 16 images: too few to select a model or a threshold on.
MIN_USABLE_VAL = 100
REPORT_NAME = "prepare_report.json"
RECORDS_PER_SHARD = 1000
FORMAT_VERSION = 5  # 5: calibration split and policy (4: DICOM features)
ROLES = (CALIBRATION_SPLIT,)
# Locally: the DirectRunner in one process. Its multi_threading mode corrupted bundles on the full data
# here (Beam 2.74: "Invalid PaneInfoEncoding"), and multi_processing pays a TensorFlow import per worker.
DEFAULT_BEAM_ARGS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]


class PrepareError(Exception):
    """A problem with the request or the data as a whole; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    path: str
    role: str = ""  # "calibration": a class-folder sample of the site, written as the calibration split

    @classmethod
    def parse(cls, text: str) -> "Source":
        name, sep, path = text.partition("=")
        role, _, name = name.rpartition(":")
        if not sep or not name or not path:
            raise PrepareError(f"source {text!r}: expected [ROLE:]NAME=PATH, e.g. kermany=/data/chest_xray")
        if not re.fullmatch(r"[a-z0-9_\-]+", name):
            raise PrepareError(f"source {text!r}: NAME must be lowercase letters, digits, '_' or '-'")
        if role and role not in ROLES:
            raise PrepareError(f"source {text!r}: unknown role {role!r}; the only role is "
                               f"{CALIBRATION_SPLIT}:NAME=PATH")
        return cls(name, os.path.abspath(os.path.expanduser(path)), role)

    @property
    def split(self) -> str:
        """The split a class-folder source becomes: its role, else its name."""
        return self.role or self.name

    @property
    def is_kaggle_layout(self) -> bool:
        return os.path.isdir(os.path.join(self.path, "train"))


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A file whose place in the layout gives it a label and a split; its bytes are not read yet."""

    dataset: str
    split: str
    label: int
    root: str
    source_path: str  # relative to the SOURCE root
    recorded_path: str  # source_path as the records and the report show it (see recorded_path)

    @property
    def shown(self) -> str:
        return f"{self.dataset}/{self.recorded_path}"

    @property
    def origin(self) -> str:
        """Where the image comes from within its dataset (the `source` feature). An evaluation-only folder that
        pools sources names each file `<source>_...` (`rsna_`, `ieee8023_`); any other image has its dataset's."""
        if self.split in (self.dataset, CALIBRATION_SPLIT):
            prefix, sep, _ = os.path.basename(self.source_path).partition("_")
            if sep and re.fullmatch(r"[a-z0-9]+", prefix.lower()):
                return prefix.lower()
        return self.dataset


@dataclasses.dataclass(frozen=True)
class Record:
    """An accepted image: everything of its tf.train.Example but the bytes (re-read when written)."""

    candidate: Candidate
    split: str
    patient_id: str
    pathogen: str
    height: int
    width: int
    channels: int
    sha256: str
    file_format: str = "jpeg"  # jpeg, png or dicom: what the file was; `image` is JPEG/PNG either way
    view_position: str = dicom.UNKNOWN
    sex: str = dicom.UNKNOWN
    age_band: str = dicom.UNKNOWN
    patient_in_train: bool = False  # the same patient ID has images in train (the `patient_in_train` slice)

    def order_key(self, seed: int) -> str:
        """A stable pseudo-random key: records are written in this order, classes interleaved."""
        return _stable_hash(str(seed), self.candidate.dataset, self.candidate.source_path)


def _stable_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


# ---------------------------------------------------------------- listing (driver, metadata only)

def _walk(root: str) -> Iterable[str]:
    """Every file under root (sorted, symlinks not followed), as paths relative to root."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        # os.walk does not descend into symlinked folders: list them so they are reported, not lost.
        linked = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in sorted(filenames + linked):
            yield os.path.relpath(os.path.join(dirpath, name), root)


_UID = re.compile(r"\d+(?:\.\d+){3,}")  # dotted digits: a DICOM UID


def recorded_path(relpath: str, salt: str) -> str:
    """The path records and the report show: each UID-shaped part (PACS exports name files by SOP Instance
    UID) becomes `uid-` and its keyed hash, so no UID is written."""
    return _UID.sub(lambda match: f"uid-{dicom.pseudonym(match.group(0), salt)}", relpath)


def classify(source: Source, relpath: str, salt: str = dicom.DEFAULT_SALT) -> Tuple[Optional[Candidate], Optional[str]]:
    """(candidate, None) for a file in the expected layout, else (None, reason)."""
    parts = relpath.split(os.sep)
    if any(part.startswith(".") for part in parts):
        return None, "hidden file"
    if os.path.islink(os.path.join(source.path, relpath)):
        return None, "symbolic link (not followed)"
    depth, layout = (3, "<split>/<class>/<file>") if source.is_kaggle_layout else (2, "<class>/<file>")
    if len(parts) != depth:
        return None, f"not at {layout}"
    if source.is_kaggle_layout and parts[0] not in KAGGLE_SPLITS:
        return None, f"unknown split folder {parts[0]!r} (expected train, val or test)"
    if parts[-2].upper() not in LABELS:
        return None, f"unknown class folder {parts[-2]!r} (expected NORMAL or PNEUMONIA)"
    if not relpath.lower().endswith(IMAGE_SUFFIXES) and not dicom.file_name_is_dicom(parts[-1]):
        return None, f"not an image file name (expected {', '.join(IMAGE_SUFFIXES)}, or DICOM: .dcm or none)"
    split = KAGGLE_SPLITS[parts[0]] if source.is_kaggle_layout else source.split
    return Candidate(source.name, split, LABELS[parts[-2].upper()], source.path, relpath,
                     recorded_path(relpath, salt)), None


def source_fingerprint(sources: Sequence[Source], options: dict) -> str:
    """Identifies the input (file names, sizes, mtimes) and options, to reuse a finished prepare."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for source in sources:
        digest.update(f"{source.name}={source.path}\n".encode())
        for relpath in _walk(source.path):
            stat = os.lstat(os.path.join(source.path, relpath))
            digest.update(f"{relpath}\t{stat.st_size}\t{int(stat.st_mtime)}\n".encode())
    return digest.hexdigest()


# ---------------------------------------------------------------- Beam stages

def _read(candidate: Candidate) -> bytes:
    with _gfile().GFile(os.path.join(candidate.root, candidate.source_path), "rb") as f:
        return f.read()


def _is_dicom(candidate: Candidate, data: bytes) -> bool:
    return dicom.is_dicom(data) or not candidate.source_path.lower().endswith(IMAGE_SUFFIXES)


def _image(candidate: Candidate, allow_lateral: bool) -> bytes:
    """The bytes the `image` feature stores: the file itself, or the PNG made from a DICOM file."""
    data = _read(candidate)
    return dicom.dicom_to_png(data, allow_lateral) if _is_dicom(candidate, data) else data


def inspect(candidate: Candidate, patient_salt: str, allow_lateral: bool):
    """Reads, hashes and fully decodes one file: a Record, or a tagged quarantine entry."""
    data = _read(candidate)
    patient, pathogen = parse_patient_and_pathogen(os.path.basename(candidate.source_path), candidate.label)
    patient = patient or os.path.splitext(candidate.source_path)[0]
    attributes = {"file_format": "jpeg" if data.startswith(b"\xff\xd8") else "png"}
    try:
        if _is_dicom(candidate, data):
            dataset = dicom.read(data)
            converted = dicom.to_model_input(dataset, allow_lateral)
            data = converted.png
            # Without a PatientID each file is its own patient, named by a hash (a file name may hold a UID).
            patient = dicom.pseudonym(str(dataset.get("PatientID") or candidate.source_path), patient_salt)
            attributes = {"file_format": "dicom", "view_position": converted.view_position, "sex": converted.sex,
                          "age_band": converted.age_band}
        height, width, channels = inspect_image(data)
    except (BadImage, dicom.DicomRefused) as error:
        yield beam.pvalue.TaggedOutput("quarantined", {"path": candidate.shown, "reason": str(error)})
        return
    yield Record(candidate, candidate.split, f"{candidate.dataset}:{patient}", pathogen, height, width, channels,
                 hashlib.sha256(data).hexdigest(), **attributes)


def keep_one_copy(copies: Tuple[str, Iterable[Record]]):
    """Of identical files keep one: an evaluation split's copy wins over train (no leakage into
    training), then the first path. The others are tagged duplicates; copies across splits are leaks."""
    _, records = copies
    records = sorted(records, key=lambda r: (r.split == "train", r.candidate.shown))
    yield records[0]
    for record in records[1:]:
        yield beam.pvalue.TaggedOutput("duplicates", {
            "path": record.candidate.shown, "duplicate_of": records[0].candidate.shown,
            "splits": sorted({record.split, records[0].split})})


def choose_eval_patients(train_patients: List[Tuple[str, str, int]], fraction: float, seed: int) -> List[str]:
    """About `fraction` of each label's train images, whole patients at a time (stratified by label).

    `train_patients` holds (dataset, patient_id, label) per train image of the sources that carve.
    """
    by_label: Dict[Tuple[str, int], collections.Counter] = collections.defaultdict(collections.Counter)
    for dataset, patient, label in train_patients:
        by_label[(dataset, label)][patient] += 1
    chosen = []
    for patients in by_label.values():
        target, taken = fraction * sum(patients.values()), 0
        for patient in sorted(patients, key=lambda p: _stable_hash(str(seed), p)):
            if taken >= target:
                break
            chosen.append(patient)
            taken += patients[patient]
    return sorted(chosen)


def assign_split(record: Record, eval_patients: List[str]) -> Record:
    if record.split == "train" and record.patient_id in eval_patients:
        return dataclasses.replace(record, split="eval")
    return record


def mark_patient_in_train(record: Record, train_patients) -> Record:
    return dataclasses.replace(record, patient_in_train=record.patient_id in train_patients)


def choose_calibration_patients(images: List[Tuple[str, str, int]], size: int, seed: int) -> List[str]:
    """Whole patients making up about `size` images, stratified by (source, label): each stratum gives its
    share of `size` (largest remainders), patients taken in a seeded order until the share is reached.

    `images` holds (patient_id, source, label) per image of the split carved from.
    """
    strata: Dict[Tuple[str, int], collections.Counter] = collections.defaultdict(collections.Counter)
    for patient, origin, label in images:
        strata[(origin, label)][patient] += 1
    total = len(images)
    exact = {stratum: size * sum(patients.values()) / total for stratum, patients in strata.items()}
    targets = {stratum: int(share) for stratum, share in exact.items()}
    by_remainder = sorted(exact, key=lambda stratum: (-(exact[stratum] - targets[stratum]), stratum))
    for stratum in by_remainder[:size - sum(targets.values())]:
        targets[stratum] += 1
    chosen = set()
    for stratum in sorted(strata):
        patients, taken = strata[stratum], 0
        for patient in sorted(patients, key=lambda p: _stable_hash(str(seed), CALIBRATION_SPLIT, p)):
            if taken >= targets[stratum]:
                break
            if patient not in chosen:
                chosen.add(patient)
                taken += patients[patient]
    return sorted(chosen)


def assign_calibration(record: Record, carved_from: str, patients: List[str]) -> Record:
    if record.split == carved_from and record.patient_id in patients:
        return dataclasses.replace(record, split=CALIBRATION_SPLIT)
    return record


def to_example(record: Record, image: bytes):
    import tensorflow as tf

    def bytes_feature(*values: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

    def int_feature(*values: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

    candidate = record.candidate
    return tf.train.Example(features=tf.train.Features(feature={
        "image": bytes_feature(image),
        "label": int_feature(candidate.label),
        "label_name": bytes_feature(LABEL_NAMES[candidate.label].encode()),
        "dataset": bytes_feature(candidate.dataset.encode()),
        "source": bytes_feature(candidate.origin.encode()),
        "split": bytes_feature(record.split.encode()),
        "patient_id": bytes_feature(record.patient_id.encode()),
        "pathogen": bytes_feature(record.pathogen.encode()),
        "source_path": bytes_feature(candidate.recorded_path.encode()),
        "height": int_feature(record.height),
        "width": int_feature(record.width),
        "channels": int_feature(record.channels),
        "patient_in_train": int_feature(int(record.patient_in_train)),
        "sha256": bytes_feature(record.sha256.encode()),
        "view_position": bytes_feature(record.view_position.encode()),
        "sex": bytes_feature(record.sex.encode()),
        "age_band": bytes_feature(record.age_band.encode()),
    }))


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}/data-{shard:05d}-of-{num_shards:05d}.tfrecord.gz"


def num_shards(count: int) -> int:
    return max(1, -(-count // RECORDS_PER_SHARD))


def write_shard(keyed: Tuple[Tuple[str, int], Iterable[Record]], out: str, seed: int, shard_counts: Dict[str, int],
                allow_lateral: bool = False):
    """Writes one shard, its records in order_key order, re-reading (and re-converting) each image's bytes."""
    import tensorflow as tf

    (split, shard), records = keyed
    name = shard_name(split, shard, shard_counts[split])
    tf.io.gfile.makedirs(os.path.join(out, split))
    with tf.io.TFRecordWriter(os.path.join(out, name), tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for record in sorted(records, key=lambda r: r.order_key(seed)):
            image = _image(record.candidate, allow_lateral)
            writer.write(to_example(record, image).SerializeToString(deterministic=True))
    return name


def summarise(records: List[Record], shards: List[str], quarantined: List[dict], duplicates: List[dict],
              listing: dict) -> dict:
    """The report: counts per split x dataset x label, patients, every file not written and why."""
    counts: Dict[str, Dict[str, Dict[str, int]]] = {}
    patients: Dict[str, set] = collections.defaultdict(set)
    formats = collections.Counter(record.file_format for record in records)
    for record in records:
        by_label = counts.setdefault(record.split, {}).setdefault(record.candidate.dataset, {})
        name = LABEL_NAMES[record.candidate.label]
        by_label[name] = by_label.get(name, 0) + 1
        patients[record.split].add(record.patient_id)
    quarantined = sorted(listing["quarantined"] + quarantined, key=lambda item: item["path"])
    duplicates = sorted(duplicates, key=lambda item: item["path"])
    shared_patients = sorted(patients["train"] & patients["eval"])
    evaluated = sorted(split for split in patients if split != "train")
    report = {
        "format": FORMAT_VERSION,
        "sources": listing["sources"],
        "fingerprint": listing["fingerprint"],
        "eval_policy": listing["eval_policy"],
        "calibration_policy": listing["calibration_policy"],
        "files_seen": listing["files_seen"],
        "written": len(records),
        "quarantined": quarantined,
        "duplicates": duplicates,
        "leaks": [d for d in duplicates if len(d["splits"]) > 1],
        "patients_in_train_and_eval": shared_patients,
        # Leakage audit of every evaluation split: patient IDs it shares with train, and those patients' images.
        "patients_shared_with_train": {split: sorted(patients[split] & patients["train"]) for split in evaluated},
        "images_of_patients_in_train": {split: sum(r.patient_in_train for r in records if r.split == split)
                                        for split in evaluated},
        "counts": counts,
        "patients": {split: len(ids) for split, ids in sorted(patients.items())},
        "formats": dict(sorted(formats.items())),
        "shards": {split: sorted(s for s in shards if s.startswith(split + "/")) for split in sorted(counts)},
    }
    report["accounted"] = report["written"] + len(quarantined) + len(duplicates) == report["files_seen"]
    return report


def build_pipeline(pipeline: beam.Pipeline, candidates: List[Candidate], carve: Dict[str, bool], out: str,
                   fraction: float, seed: int, listing: dict, patient_salt: str = dicom.DEFAULT_SALT,
                   allow_lateral: bool = False, calibration_from: Optional[str] = None,
                   calibration_size: int = 0) -> None:
    inspected = (pipeline | "Files" >> beam.Create(candidates, reshuffle=True)
                 | "Inspect" >> beam.FlatMap(inspect, patient_salt, allow_lateral)
                 .with_outputs("quarantined", main="ok"))
    unique = (inspected.ok | "BySha256" >> beam.Map(lambda r: (r.sha256, r)) | "GroupCopies" >> beam.GroupByKey()
              | "KeepOneCopy" >> beam.FlatMap(keep_one_copy).with_outputs("duplicates", main="kept"))
    eval_patients = (
        unique.kept
        | "CarvingTrain" >> beam.Filter(lambda r: r.split == "train" and carve[r.candidate.dataset])
        | "PatientLabel" >> beam.Map(lambda r: (r.candidate.dataset, r.patient_id, r.candidate.label))
        | "AllTrain" >> beam.combiners.ToList()
        | "EvalPatients" >> beam.Map(choose_eval_patients, fraction, seed))
    assigned = unique.kept | "AssignSplit" >> beam.Map(
        lambda r, chosen: assign_split(r, set(chosen)), beam.pvalue.AsSingleton(eval_patients))
    if calibration_from:
        calibration_patients = (
            assigned
            | "CalibrationSource" >> beam.Filter(lambda r: r.split == calibration_from)
            | "PatientSourceLabel" >> beam.Map(lambda r: (r.patient_id, r.candidate.origin, r.candidate.label))
            | "AllOfSplit" >> beam.combiners.ToList()
            | "CalibrationPatients" >> beam.Map(choose_calibration_patients, calibration_size, seed))
        assigned = assigned | "AssignCalibration" >> beam.Map(
            lambda r, chosen: assign_calibration(r, calibration_from, set(chosen)),
            beam.pvalue.AsSingleton(calibration_patients))
    train_patients = (assigned | "TrainOnly" >> beam.Filter(lambda r: r.split == "train")
                      | "TrainPatient" >> beam.Map(lambda r: r.patient_id)
                      | "TrainPatients" >> beam.combiners.ToSet())
    records = assigned | "MarkPatientInTrain" >> beam.Map(mark_patient_in_train,
                                                         beam.pvalue.AsSingleton(train_patients))
    shard_counts = (records | "SplitKey" >> beam.Map(lambda r: r.split) | "CountSplits" >> beam.combiners.Count.PerElement()
                    | "ShardsPerSplit" >> beam.Map(lambda kv: (kv[0], num_shards(kv[1]))))
    shards = (
        records
        | "ShardKey" >> beam.Map(lambda r, counts: ((r.split, int(r.order_key(seed), 16) % counts[r.split]), r),
                                 beam.pvalue.AsDict(shard_counts))
        | "GroupShards" >> beam.GroupByKey()
        | "WriteShards" >> beam.Map(write_shard, out, seed, beam.pvalue.AsDict(shard_counts), allow_lateral))

    def write_report(_, all_records, all_shards, quarantined, duplicates):
        report = summarise(all_records, all_shards, quarantined, duplicates, listing)
        with _gfile().GFile(os.path.join(out, REPORT_NAME), "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)

    _ = (pipeline | "ReportTrigger" >> beam.Create([None])
         | "WriteReport" >> beam.Map(write_report, beam.pvalue.AsList(records), beam.pvalue.AsList(shards),
                                     beam.pvalue.AsList(inspected.quarantined),
                                     beam.pvalue.AsList(unique.duplicates)))


# ---------------------------------------------------------------- the job

def _gfile():
    """tf.io.gfile, imported when first needed (`pneumonia --help` stays fast): every read and write under
    the output folder goes through it, so `--out` may be a bucket (gs://) as well as a local folder."""
    import tensorflow as tf

    return tf.io.gfile


def _remove(folder: str) -> None:
    import tensorflow as tf

    try:
        tf.io.gfile.rmtree(folder)
    except tf.errors.NotFoundError:
        pass


def _move_folder(source: str, target: str) -> None:
    """Locally one atomic rename. An object store has no folders to rename: each file moves on its own, the
    report last, so a reader (which looks for the report first) never takes half the shards for a dataset."""
    if "://" not in source:
        os.rename(source, target)
        return
    files = [os.path.join(folder, name) for folder, _, names in _gfile().walk(source) for name in names]
    for path in sorted(files, key=lambda p: os.path.basename(p) == REPORT_NAME):
        destination = os.path.join(target, os.path.relpath(path, source))
        _gfile().makedirs(os.path.dirname(destination))
        _gfile().rename(path, destination, overwrite=True)
    _remove(source)


def _check_output(out: str, fingerprint: str, overwrite: bool) -> Optional[dict]:
    """The existing report when `out` already holds exactly this input; raises if it holds other data."""
    if is_prepared(out):
        previous = read_report(out)
        if previous.get("fingerprint") == fingerprint and previous.get("format") == FORMAT_VERSION:
            return previous
        if not overwrite:
            raise PrepareError(f"{out} already holds a different prepared dataset; pass --overwrite to replace it")
    elif _gfile().isdir(out) and _gfile().listdir(out) and not overwrite:
        raise PrepareError(f"{out} is not empty and holds no {REPORT_NAME}; pass --overwrite or choose another --out")
    return None


def _check_report(report: dict, max_bad_fraction: float, strict: bool) -> None:
    if not report["accounted"]:
        raise PrepareError(f"{report['files_seen']} files seen, but {report['written']} written + "
                           f"{len(report['quarantined'])} quarantined + {len(report['duplicates'])} duplicates do not "
                           f"add up: files were lost or counted twice (a bug; details in {REPORT_NAME})")
    bad = len(report["quarantined"])
    if report["files_seen"] and bad / report["files_seen"] > max_bad_fraction:
        reasons = collections.Counter(item["reason"].split(":")[0] for item in report["quarantined"])
        common = ", ".join(f"{reason} ({count})" for reason, count in reasons.most_common(3))
        raise PrepareError(f"{bad} of {report['files_seen']} files quarantined, more than --max-bad-fraction "
                           f"{max_bad_fraction:g}: {common}")
    if strict and report["leaks"]:
        first = report["leaks"][0]
        raise PrepareError(f"--strict: {len(report['leaks'])} identical file(s) across splits, e.g. {first['path']} "
                           f"= {first['duplicate_of']}")
    if strict and report["patients_in_train_and_eval"]:
        raise PrepareError(f"--strict: {len(report['patients_in_train_and_eval'])} patient(s) in both train and "
                           f"eval, e.g. {report['patients_in_train_and_eval'][0]}")


def _check_calibration(sources: Sequence[Source], calibration_from: Optional[str], calibration_size: int) -> str:
    """The calibration policy in words; raises on a request that cannot give one calibration split."""
    own = [s for s in sources if s.role == CALIBRATION_SPLIT]
    if len(own) > 1 or (own and calibration_from):
        raise PrepareError("one calibration split only: give either one calibration:NAME=PATH source or "
                           "--calibration-from SPLIT")
    for source in own:
        if source.is_kaggle_layout:
            raise PrepareError(f"calibration source {source.name}: expected NORMAL/ and PNEUMONIA/ folders, "
                               f"not a train/ test/ layout")
    if own:
        return f"own folder {own[0].name} ({own[0].path})"
    if calibration_size and not calibration_from:
        raise PrepareError("--calibration-size needs --calibration-from SPLIT")
    if not calibration_from:
        return "none"
    if calibration_from in ("train", "eval", CALIBRATION_SPLIT):
        raise PrepareError(f"--calibration-from {calibration_from}: carve from test or an evaluation-only split, "
                           f"never from the data that trains or selects the model")
    if calibration_size < 2:
        raise PrepareError(f"--calibration-size {calibration_size}: give the number of images to carve (at least 2)")
    return (f"{calibration_size} images carved from {calibration_from} by patient, stratified by source and label "
            f"(seeded)")


def prepare(sources: Sequence[Source], out: str, eval_fraction: float = 0.1, seed: int = 42,
            overwrite: bool = False, max_bad_fraction: float = 0.01, strict: bool = False,
            beam_args: Optional[List[str]] = None, patient_salt: Optional[str] = None,
            allow_lateral: bool = False, calibration_from: Optional[str] = None,
            calibration_size: int = 0) -> dict:
    """Writes the TFRecords and report into `out` and returns the report (see module docstring)."""
    if not sources:
        raise PrepareError("no SOURCE given: pass NAME=PATH, e.g. kermany=/data/chest_xray")
    if len({s.name for s in sources}) != len(sources):
        raise PrepareError("each SOURCE needs a distinct NAME")
    for source in sources:
        if not os.path.isdir(source.path):
            raise PrepareError(f"source {source.name}: folder {source.path} does not exist")
    if not 0.0 < eval_fraction < 1.0:
        raise PrepareError(f"--eval-fraction {eval_fraction} must be between 0 and 1")
    calibration_policy = _check_calibration(sources, calibration_from, calibration_size)
    patient_salt = patient_salt or dicom.DEFAULT_SALT
    out = absolute_uri(out)
    options = {"eval_fraction": eval_fraction, "seed": seed, "patient_salt": patient_salt,
               "allow_lateral": allow_lateral}
    if calibration_policy != "none":
        options.update(calibration_from=calibration_from, calibration_size=calibration_size,
                       roles={s.name: s.role for s in sources if s.role})
    fingerprint = source_fingerprint(sources, options)
    previous = _check_output(out, fingerprint, overwrite)
    if previous is not None:
        _check_report(previous, max_bad_fraction, strict)
        return previous

    listing = {"sources": {s.name: s.path for s in sources}, "fingerprint": fingerprint, "files_seen": 0,
               "quarantined": [], "eval_policy": [], "calibration_policy": calibration_policy}
    candidates: List[Candidate] = []
    carve: Dict[str, bool] = {}
    for source in sources:
        found = []
        for relpath in _walk(source.path):
            listing["files_seen"] += 1
            candidate, reason = classify(source, relpath, patient_salt)
            if candidate is None:
                listing["quarantined"].append({"path": f"{source.name}/{recorded_path(relpath, patient_salt)}",
                                               "reason": reason})
            else:
                found.append(candidate)
        if not found:
            raise PrepareError(f"source {source.name}: no images in the expected layout under {source.path}")
        carve[source.name] = False
        if source.is_kaggle_layout:
            val = [c for c in found if c.split == "eval"]
            if len(val) >= MIN_USABLE_VAL:
                listing["eval_policy"].append(f"{source.name}: official val/ ({len(val)} files)")
            else:  # too few to select on: they join train, and eval is carved from train by patient
                found = [dataclasses.replace(c, split="train") if c.split == "eval" else c for c in found]
                carve[source.name] = True
                listing["eval_policy"].append(
                    f"{source.name}: {eval_fraction:.0%} of train carved by patient, stratified by label "
                    f"(val/ had {len(val)} files)")
        candidates.extend(found)
    listing["eval_policy"] = "; ".join(listing["eval_policy"]) or "no train/val/test source"
    if calibration_from:
        available = sum(c.split == calibration_from for c in candidates)
        if not available:
            splits = sorted({c.split for c in candidates} - {"train", "eval"})
            raise PrepareError(f"--calibration-from {calibration_from}: no such split; splits to carve from: "
                               f"{', '.join(splits) or 'none'}")
        if calibration_size >= available:
            raise PrepareError(f"--calibration-size {calibration_size}: split {calibration_from} has only "
                               f"{available} files, and some must stay to report on")

    staging = f"{out}.staging"
    _remove(staging)
    _gfile().makedirs(staging)
    with beam.Pipeline(options=PipelineOptions(beam_args or DEFAULT_BEAM_ARGS)) as pipeline:
        build_pipeline(pipeline, candidates, carve, staging, eval_fraction, seed, listing, patient_salt,
                       allow_lateral, calibration_from, calibration_size)
    report = read_report(staging)
    try:
        _check_report(report, max_bad_fraction, strict)
    except PrepareError:
        rejected = f"{out}.rejected"
        _remove(rejected)
        _move_folder(staging, rejected)
        raise
    _remove(out)  # only reached with --overwrite or an empty/absent folder
    _move_folder(staging, out)
    return report


def is_prepared(folder: str) -> bool:
    return _gfile().exists(os.path.join(folder, REPORT_NAME))


def read_report(folder: str) -> dict:
    with _gfile().GFile(os.path.join(folder, REPORT_NAME)) as f:
        return json.load(f)


def summary(report: dict) -> str:
    """The one-screen summary printed after a prepare."""
    lines = [f"files seen {report['files_seen']}: written {report['written']}, quarantined "
             f"{len(report['quarantined'])}, duplicates skipped {len(report['duplicates'])} "
             f"({'all accounted for' if report['accounted'] else 'NOT ALL ACCOUNTED FOR'})"]
    if report["formats"].get("dicom"):
        lines.append(f"  written from DICOM: {report['formats']['dicom']} (as 8-bit PNG; patient IDs as keyed hashes)")
    for split, by_dataset in sorted(report["counts"].items()):
        for dataset, by_label in sorted(by_dataset.items()):
            labels = ", ".join(f"{name} {count}" for name, count in sorted(by_label.items()))
            lines.append(f"  {split:<10} {dataset:<10} {labels}  (patients {report['patients'].get(split, 0)})")
    lines.append(f"  eval: {report['eval_policy']}")
    lines.append(f"  calibration: {report['calibration_policy']}")
    if report["leaks"]:
        lines.append(f"  identical files across splits: {len(report['leaks'])} (the evaluation copy is kept)")
    for split, shared in report["patients_shared_with_train"].items():
        if shared:
            lines.append(f"  {split}: {len(shared)} patient ID(s) also in train, "
                         f"{report['images_of_patients_in_train'][split]} image(s) (slice patient_in_train=1)")
    for item in report["quarantined"][:10]:
        lines.append(f"  quarantined {item['path']}: {item['reason']}")
    if len(report["quarantined"]) > 10:
        lines.append(f"  ... {len(report['quarantined']) - 10} more quarantined files in {REPORT_NAME}")
    return "\n".join(lines)
