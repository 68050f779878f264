"""Image folders -> gzipped TFRecords of tf.train.Example, one folder per split, plus a report.

A SOURCE is `NAME=PATH`. A PATH with `train/` (and optionally `val/`, `test/`) is the Kaggle layout:
its splits are kept, and validation (`eval`) is carved from train grouped by patient when `val/` is
too small to use. A PATH with only class folders (`NORMAL/`, `PNEUMONIA/`) becomes an evaluation-only
split named NAME. Every file ends up written or listed in the report with the reason it was not.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from PIL import Image

LABELS = {"NORMAL": 0, "PNEUMONIA": 1}
LABEL_NAMES = {v: k for k, v in LABELS.items()}
KAGGLE_SPLITS = {"train": "train", "val": "eval", "test": "test"}
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
MIN_SIDE = 32
MAX_PIXELS = 100_000_000
# The official Kaggle val/ holds 16 images: too few to select a model or a threshold on.
MIN_USABLE_VAL = 100
REPORT_NAME = "prepare_report.json"
RECORDS_PER_SHARD = 1000

_KERMANY_PNEUMONIA = re.compile(r"^(person\d+)_(bacteria|virus)_\d+", re.IGNORECASE)
_KERMANY_NORMAL = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+", re.IGNORECASE)


class PrepareError(Exception):
    """A problem with the request as a whole (missing source, refused overwrite)."""


class BadImage(Exception):
    """A file that cannot be used as an X-ray; the message is the reason."""


@dataclasses.dataclass(frozen=True)
class Source:
    name: str
    path: str

    @classmethod
    def parse(cls, text: str) -> "Source":
        name, sep, path = text.partition("=")
        if not sep or not name or not path:
            raise PrepareError(f"source {text!r}: expected NAME=PATH, e.g. kermany=/data/chest_xray")
        if not re.fullmatch(r"[a-z0-9_\-]+", name):
            raise PrepareError(f"source {text!r}: NAME must be lowercase letters, digits, '_' or '-'")
        return cls(name, os.path.abspath(os.path.expanduser(path)))

    @property
    def is_kaggle_layout(self) -> bool:
        return os.path.isdir(os.path.join(self.path, "train"))


@dataclasses.dataclass
class Record:
    """One image accepted into a split."""

    dataset: str
    split: str
    label: int
    source_path: str
    patient_id: str
    pathogen: str
    height: int
    width: int
    channels: int
    sha256: str
    image: bytes = dataclasses.field(repr=False)


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
    """Returns (height, width, channels) of a decodable JPEG/PNG X-ray, else raises BadImage."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:  # PIL raises several types for non-images
        raise BadImage("not a JPEG or PNG image (unrecognised bytes)") from None
    if image.format not in ("JPEG", "PNG"):
        raise BadImage(f"unsupported image format {image.format}")
    width, height = image.size
    if width * height > MAX_PIXELS:  # checked from the header, before decoding
        raise BadImage(f"declared size {width}x{height} exceeds {MAX_PIXELS // 1_000_000} megapixels")
    if min(width, height) < MIN_SIDE:
        raise BadImage(f"too small: {width}x{height} (minimum {MIN_SIDE} px a side)")
    try:
        image.load()
    except Exception as error:
        raise BadImage(f"cannot decode {image.format}: {error}") from None
    channels = {"1": 1, "L": 1, "I": 1, "I;16": 1, "LA": 2, "RGB": 3, "YCbCr": 3, "RGBA": 4, "CMYK": 4}.get(image.mode)
    if channels is None:
        raise BadImage(f"unsupported pixel mode {image.mode}")
    return height, width, channels


def _walk(root: str) -> Iterable[str]:
    """Every file under root (sorted, symlinks not followed), as paths relative to root."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        # os.walk does not descend into symlinked folders: list them so they are reported, not lost.
        linked = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in sorted(filenames + linked):
            yield os.path.relpath(os.path.join(dirpath, name), root)


@dataclasses.dataclass
class Report:
    sources: Dict[str, str] = dataclasses.field(default_factory=dict)
    files_seen: int = 0
    written: int = 0
    quarantined: List[Dict[str, str]] = dataclasses.field(default_factory=list)
    duplicates: List[Dict[str, str]] = dataclasses.field(default_factory=list)
    counts: Dict[str, Dict[str, Dict[str, int]]] = dataclasses.field(default_factory=dict)
    patients: Dict[str, int] = dataclasses.field(default_factory=dict)
    shards: Dict[str, List[str]] = dataclasses.field(default_factory=dict)
    eval_policy: str = ""
    fingerprint: str = ""

    def as_dict(self) -> dict:
        result = dataclasses.asdict(self)
        result["accounted"] = self.written + len(self.quarantined) + len(self.duplicates) == self.files_seen
        return result

    def summary(self) -> str:
        lines = [f"files seen {self.files_seen}: written {self.written}, quarantined "
                 f"{len(self.quarantined)}, duplicates skipped {len(self.duplicates)}"]
        for split, by_dataset in sorted(self.counts.items()):
            for dataset, by_label in sorted(by_dataset.items()):
                labels = ", ".join(f"{name} {count}" for name, count in sorted(by_label.items()))
                lines.append(f"  {split:<10} {dataset:<10} {labels}  (patients {self.patients.get(split, 0)})")
        lines.append(f"  eval: {self.eval_policy}")
        for item in self.quarantined[:10]:
            lines.append(f"  quarantined {item['path']}: {item['reason']}")
        if len(self.quarantined) > 10:
            lines.append(f"  ... {len(self.quarantined) - 10} more quarantined files in {REPORT_NAME}")
        return "\n".join(lines)


def source_fingerprint(sources: Sequence[Source], options: dict) -> str:
    """Identifies the input (file names, sizes, mtimes) and options, to reuse a finished prepare."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for source in sources:
        digest.update(f"{source.name}={source.path}\n".encode())
        for relpath in _walk(source.path):
            stat = os.lstat(os.path.join(source.path, relpath))
            digest.update(f"{relpath}\t{stat.st_size}\t{int(stat.st_mtime)}\n".encode())
    return digest.hexdigest()


def _stable_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def carve_eval(records: List[Record], fraction: float, seed: int) -> None:
    """Moves about `fraction` of each label's train images to `eval`, whole patients at a time."""
    by_label: Dict[int, Dict[str, List[Record]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for record in records:
        if record.split == "train":
            by_label[record.label][record.patient_id].append(record)
    for patients in by_label.values():
        target = fraction * sum(len(group) for group in patients.values())
        taken = 0
        for patient in sorted(patients, key=lambda p: _stable_hash(str(seed), p)):
            if taken >= target:
                break
            for record in patients[patient]:
                record.split = "eval"
            taken += len(patients[patient])


def _collect(source: Source, report: Report, seen: Dict[str, str]) -> List[Record]:
    """Reads every file of one source into records; bad files and duplicates go to the report."""
    records = []
    for relpath in _walk(source.path):
        report.files_seen += 1
        shown = f"{source.name}/{relpath}"
        full = os.path.join(source.path, relpath)

        def quarantine(reason: str) -> None:
            report.quarantined.append({"path": shown, "reason": reason})

        parts = relpath.split(os.sep)
        if any(part.startswith(".") for part in parts):
            quarantine("hidden file")
            continue
        if os.path.islink(full):
            quarantine("symbolic link (not followed)")
            continue
        depth, layout = (3, "<split>/<class>/<file>") if source.is_kaggle_layout else (2, "<class>/<file>")
        if len(parts) != depth:
            quarantine(f"not at {layout}")
            continue
        if source.is_kaggle_layout and parts[0] not in KAGGLE_SPLITS:
            quarantine(f"unknown split folder {parts[0]!r} (expected train, val or test)")
            continue
        class_dir = parts[-2]
        if class_dir.upper() not in LABELS:
            quarantine(f"unknown class folder {class_dir!r} (expected NORMAL or PNEUMONIA)")
            continue
        split = KAGGLE_SPLITS[parts[0]] if source.is_kaggle_layout else source.name
        if not relpath.lower().endswith(IMAGE_SUFFIXES):
            quarantine(f"not an image file name (expected {', '.join(IMAGE_SUFFIXES)})")
            continue
        with open(full, "rb") as f:
            data = f.read()
        try:
            height, width, channels = inspect_image(data)
        except BadImage as error:
            quarantine(str(error))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            report.duplicates.append({"path": shown, "duplicate_of": seen[digest]})
            continue
        seen[digest] = shown
        label = LABELS[class_dir.upper()]
        patient, pathogen = parse_patient_and_pathogen(os.path.basename(relpath), label)
        records.append(Record(
            dataset=source.name, split=split, label=label, source_path=relpath,
            patient_id=f"{source.name}:{patient or os.path.splitext(relpath)[0]}", pathogen=pathogen,
            height=height, width=width, channels=channels, sha256=digest, image=data))
    return records


def to_example(record: Record):
    import tensorflow as tf

    def bytes_feature(*values: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

    def int_feature(*values: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

    return tf.train.Example(features=tf.train.Features(feature={
        "image": bytes_feature(record.image),
        "label": int_feature(record.label),
        "label_name": bytes_feature(LABEL_NAMES[record.label].encode()),
        "dataset": bytes_feature(record.dataset.encode()),
        "split": bytes_feature(record.split.encode()),
        "patient_id": bytes_feature(record.patient_id.encode()),
        "pathogen": bytes_feature(record.pathogen.encode()),
        "source_path": bytes_feature(record.source_path.encode()),
        "height": int_feature(record.height),
        "width": int_feature(record.width),
        "channels": int_feature(record.channels),
        "sha256": bytes_feature(record.sha256.encode()),
    }))


def _write_split(out: str, split: str, records: List[Record]) -> List[str]:
    import tensorflow as tf

    os.makedirs(os.path.join(out, split), exist_ok=True)
    num_shards = max(1, -(-len(records) // RECORDS_PER_SHARD))
    names = []
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for shard in range(num_shards):
        name = f"{split}/data-{shard:05d}-of-{num_shards:05d}.tfrecord.gz"
        with tf.io.TFRecordWriter(os.path.join(out, name), options) as writer:
            for record in records[shard::num_shards]:
                writer.write(to_example(record).SerializeToString())
        names.append(name)
    return names


def prepare(sources: Sequence[Source], out: str, eval_fraction: float = 0.1, seed: int = 42,
            overwrite: bool = False) -> Report:
    """Writes the TFRecords and report into `out`; reuses `out` when it already holds this input."""
    if not sources:
        raise PrepareError("no SOURCE given: pass NAME=PATH, e.g. kermany=/data/chest_xray")
    for source in sources:
        if not os.path.isdir(source.path):
            raise PrepareError(f"source {source.name}: folder {source.path} does not exist")
    if len({s.name for s in sources}) != len(sources):
        raise PrepareError("each SOURCE needs a distinct NAME")
    options = {"eval_fraction": eval_fraction, "seed": seed, "format": 1}
    fingerprint = source_fingerprint(sources, options)
    report_path = os.path.join(out, REPORT_NAME)
    if os.path.exists(report_path):
        with open(report_path, encoding="utf-8") as f:
            previous = json.load(f)
        if previous.get("fingerprint") == fingerprint and not overwrite:
            return Report(**{k: v for k, v in previous.items() if k != "accounted"})
        if not overwrite:
            raise PrepareError(f"{out} already holds a different prepared dataset; pass --overwrite to replace it")
    elif os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise PrepareError(f"{out} is not empty and holds no {REPORT_NAME}; pass --overwrite or choose another --out")

    report = Report(sources={s.name: s.path for s in sources}, fingerprint=fingerprint)
    seen: Dict[str, str] = {}
    records: List[Record] = []
    for source in sources:
        source_records = _collect(source, report, seen)
        if not source_records:
            raise PrepareError(f"source {source.name}: no usable images under {source.path}")
        if source.is_kaggle_layout:
            val = [r for r in source_records if r.split == "eval"]
            if len(val) >= MIN_USABLE_VAL:
                report.eval_policy = f"{source.name}: official val/ ({len(val)} images)"
            else:
                for record in val:  # too few to select on: fold back into train before the carve
                    record.split = "train"
                carve_eval(source_records, eval_fraction, seed)
                report.eval_policy = (f"{source.name}: {eval_fraction:.0%} of train carved by patient, "
                                      f"stratified by label (val/ had {len(val)} images)")
        records.extend(source_records)

    if overwrite and os.path.isdir(out):
        import shutil
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    by_split: Dict[str, List[Record]] = collections.defaultdict(list)
    for record in records:
        by_split[record.split].append(record)
    for split, split_records in sorted(by_split.items()):
        # A deterministic shuffle: classes interleave from the first record on.
        split_records.sort(key=lambda r: _stable_hash(str(seed), r.dataset, r.source_path))
        report.shards[split] = _write_split(out, split, split_records)
        report.patients[split] = len({r.patient_id for r in split_records})
        for record in split_records:
            by_label = report.counts.setdefault(split, {}).setdefault(record.dataset, {})
            by_label[LABEL_NAMES[record.label]] = by_label.get(LABEL_NAMES[record.label], 0) + 1
        report.written += len(split_records)
    with open(report_path, "w", encoding="utf-8") as f:
        json.dump(report.as_dict(), f, indent=2, sort_keys=True)
    return report


def read_report(folder: str) -> dict:
    with open(os.path.join(folder, REPORT_NAME), encoding="utf-8") as f:
        return json.load(f)
