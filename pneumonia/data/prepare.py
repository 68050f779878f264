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

import dataclasses
import hashlib
import json
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import apache_beam as beam
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.config import CALIBRATION_SPLIT, absolute_uri
from pneumonia.data import audit, carve, output, runners
from pneumonia.data.images import BadImage, inspect_image, parse_patient_and_pathogen
from pneumonia.data.records import Record, num_shards, shard_name, to_example
from pneumonia.data.sources import (
    IMAGE_SUFFIXES,
    Candidate,
    PrepareError,
    Source,
    classify,
    recorded_path,
    source_fingerprint,
    walk,
)
from serving import dicom

# The official Kaggle val/ holds 16 images: too few to select a model or a threshold on.
MIN_USABLE_VAL = 100
# Locally: the DirectRunner in one process. Its multi_threading mode corrupted bundles on the full data
# here (Beam 2.74: "Invalid PaneInfoEncoding"), and multi_processing pays a TensorFlow import per worker.
DEFAULT_BEAM_ARGS = ["--direct_num_workers=1", "--direct_running_mode=in_memory"]


def _read(candidate: Candidate) -> bytes:
    with tf.io.gfile.GFile(os.path.join(candidate.root, candidate.source_path), "rb") as f:
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
            attributes = {
                "file_format": "dicom",
                "view_position": converted.view_position,
                "sex": converted.sex,
                "age_band": converted.age_band,
            }
        height, width, channels = inspect_image(data)
    except (BadImage, dicom.DicomRefused) as error:
        yield beam.pvalue.TaggedOutput("quarantined", {"path": candidate.shown, "reason": str(error)})
        return
    yield Record(
        candidate,
        candidate.split,
        f"{candidate.dataset}:{patient}",
        pathogen,
        height,
        width,
        channels,
        hashlib.sha256(data).hexdigest(),
        **attributes,
    )


def keep_one_copy(copies: Tuple[str, Iterable[Record]]):
    """Of identical files keep one: an evaluation split's copy wins over train (no leakage into
    training), then the first path. The others are tagged duplicates; copies across splits are leaks."""
    _, records = copies
    records = sorted(records, key=lambda r: (r.split == "train", r.candidate.shown))
    yield records[0]
    for record in records[1:]:
        yield beam.pvalue.TaggedOutput(
            "duplicates",
            {
                "path": record.candidate.shown,
                "duplicate_of": records[0].candidate.shown,
                "splits": sorted({record.split, records[0].split}),
            },
        )


def write_shard(
    keyed: Tuple[Tuple[str, int], Iterable[Record]],
    out: str,
    seed: int,
    shard_counts: Dict[str, int],
    allow_lateral: bool = False,
):
    """Writes one shard, its records in order_key order, re-reading (and re-converting) each image's bytes."""
    (split, shard), records = keyed
    name = shard_name(split, shard, shard_counts[split])
    tf.io.gfile.makedirs(os.path.join(out, split))
    with tf.io.TFRecordWriter(os.path.join(out, name), tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
        for record in sorted(records, key=lambda r: r.order_key(seed)):
            image = _image(record.candidate, allow_lateral)
            writer.write(to_example(record, image).SerializeToString(deterministic=True))
    return name


def build_pipeline(
    pipeline: beam.Pipeline,
    candidates: List[Candidate],
    carves_eval: Dict[str, bool],
    out: str,
    fraction: float,
    seed: int,
    listing: dict,
    patient_salt: str = dicom.DEFAULT_SALT,
    allow_lateral: bool = False,
    calibration_from: Optional[str] = None,
    calibration_size: int = 0,
) -> None:
    inspected = (
        pipeline
        | "Files" >> beam.Create(candidates, reshuffle=True)
        | "Inspect" >> beam.FlatMap(inspect, patient_salt, allow_lateral).with_outputs("quarantined", main="ok")
    )
    unique = (
        inspected.ok
        | "BySha256" >> beam.Map(lambda r: (r.sha256, r))
        | "GroupCopies" >> beam.GroupByKey()
        | "KeepOneCopy" >> beam.FlatMap(keep_one_copy).with_outputs("duplicates", main="kept")
    )
    eval_patients = (
        unique.kept
        | "CarvingTrain" >> beam.Filter(lambda r: r.split == "train" and carves_eval[r.candidate.dataset])
        | "PatientLabel" >> beam.Map(lambda r: (r.candidate.dataset, r.patient_id, r.candidate.label))
        | "AllTrain" >> beam.combiners.ToList()
        | "EvalPatients" >> beam.Map(carve.choose_eval_patients, fraction, seed)
    )
    assigned = unique.kept | "AssignSplit" >> beam.Map(
        lambda r, chosen: carve.assign_split(r, set(chosen)), beam.pvalue.AsSingleton(eval_patients)
    )
    if calibration_from:
        calibration_patients = (
            assigned
            | "CalibrationSource" >> beam.Filter(lambda r: r.split == calibration_from)
            | "PatientSourceLabel" >> beam.Map(lambda r: (r.patient_id, r.candidate.origin, r.candidate.label))
            | "AllOfSplit" >> beam.combiners.ToList()
            | "CalibrationPatients" >> beam.Map(carve.choose_calibration_patients, calibration_size, seed)
        )
        assigned = assigned | "AssignCalibration" >> beam.Map(
            lambda r, chosen: carve.assign_calibration(r, calibration_from, set(chosen)),
            beam.pvalue.AsSingleton(calibration_patients),
        )
    train_patients = (
        assigned
        | "TrainOnly" >> beam.Filter(lambda r: r.split == "train")
        | "TrainPatient" >> beam.Map(lambda r: r.patient_id)
        | "TrainPatients" >> beam.combiners.ToSet()
    )
    records = assigned | "MarkPatientInTrain" >> beam.Map(
        carve.mark_patient_in_train, beam.pvalue.AsSingleton(train_patients)
    )
    shard_counts = (
        records
        | "SplitKey" >> beam.Map(lambda r: r.split)
        | "CountSplits" >> beam.combiners.Count.PerElement()
        | "ShardsPerSplit" >> beam.Map(lambda kv: (kv[0], num_shards(kv[1])))
    )
    shards = (
        records
        | "ShardKey"
        >> beam.Map(
            lambda r, counts: ((r.split, int(r.order_key(seed), 16) % counts[r.split]), r),
            beam.pvalue.AsDict(shard_counts),
        )
        | "GroupShards" >> beam.GroupByKey()
        | "WriteShards" >> beam.Map(write_shard, out, seed, beam.pvalue.AsDict(shard_counts), allow_lateral)
    )

    def write_report(_, all_records, all_shards, quarantined, duplicates):
        report = audit.summarise(all_records, all_shards, quarantined, duplicates, listing)
        with tf.io.gfile.GFile(os.path.join(out, audit.REPORT_NAME), "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)

    _ = (
        pipeline
        | "ReportTrigger" >> beam.Create([None])
        | "WriteReport"
        >> beam.Map(
            write_report,
            beam.pvalue.AsList(records),
            beam.pvalue.AsList(shards),
            beam.pvalue.AsList(inspected.quarantined),
            beam.pvalue.AsList(unique.duplicates),
        )
    )


# ---------------------------------------------------------------- the job


def _check_calibration(sources: Sequence[Source], calibration_from: Optional[str], calibration_size: int) -> str:
    """The calibration policy in words; raises on a request that cannot give one calibration split."""
    own = [s for s in sources if s.role == CALIBRATION_SPLIT]
    if len(own) > 1 or (own and calibration_from):
        raise PrepareError(
            "one calibration split only: give either one calibration:NAME=PATH source or --calibration-from SPLIT"
        )
    for source in own:
        if source.is_kaggle_layout:
            raise PrepareError(
                f"calibration source {source.name}: expected NORMAL/ and PNEUMONIA/ folders, not a train/ test/ layout"
            )
    if own:
        return f"own folder {own[0].name} ({own[0].path})"
    if calibration_size and not calibration_from:
        raise PrepareError("--calibration-size needs --calibration-from SPLIT")
    if not calibration_from:
        return "none"
    if calibration_from in ("train", "eval", CALIBRATION_SPLIT):
        raise PrepareError(
            f"--calibration-from {calibration_from}: carve from test or an evaluation-only split, "
            f"never from the data that trains or selects the model"
        )
    if calibration_size < 2:
        raise PrepareError(f"--calibration-size {calibration_size}: give the number of images to carve (at least 2)")
    return (
        f"{calibration_size} images carved from {calibration_from} by patient, stratified by source and label (seeded)"
    )


def prepare(
    sources: Sequence[Source],
    out: str,
    eval_fraction: float = 0.1,
    seed: int = 42,
    overwrite: bool = False,
    max_bad_fraction: float = 0.01,
    strict: bool = False,
    beam_args: Optional[List[str]] = None,
    patient_salt: Optional[str] = None,
    allow_lateral: bool = False,
    calibration_from: Optional[str] = None,
    calibration_size: int = 0,
) -> dict:
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
    options = {
        "eval_fraction": eval_fraction,
        "seed": seed,
        "patient_salt": patient_salt,
        "allow_lateral": allow_lateral,
    }
    if calibration_policy != "none":
        options.update(
            calibration_from=calibration_from,
            calibration_size=calibration_size,
            roles={s.name: s.role for s in sources if s.role},
        )
    fingerprint = source_fingerprint(sources, options)
    previous = output.check_output(out, fingerprint, overwrite)
    if previous is not None:
        audit.check_report(previous, max_bad_fraction, strict)
        return previous

    listing = {
        "sources": {s.name: s.path for s in sources},
        "fingerprint": fingerprint,
        "files_seen": 0,
        "quarantined": [],
        "eval_policy": [],
        "calibration_policy": calibration_policy,
    }
    candidates: List[Candidate] = []
    carves_eval: Dict[str, bool] = {}
    for source in sources:
        found = []
        for relpath in walk(source.path):
            listing["files_seen"] += 1
            candidate, reason = classify(source, relpath, patient_salt)
            if candidate is None:
                listing["quarantined"].append(
                    {"path": f"{source.name}/{recorded_path(relpath, patient_salt)}", "reason": reason}
                )
            else:
                found.append(candidate)
        if not found:
            raise PrepareError(f"source {source.name}: no images in the expected layout under {source.path}")
        carves_eval[source.name] = False
        if source.is_kaggle_layout:
            val = [c for c in found if c.split == "eval"]
            if len(val) >= MIN_USABLE_VAL:
                listing["eval_policy"].append(f"{source.name}: official val/ ({len(val)} files)")
            else:  # too few to select on: they join train, and eval is carved from train by patient
                found = [dataclasses.replace(c, split="train") if c.split == "eval" else c for c in found]
                carves_eval[source.name] = True
                listing["eval_policy"].append(
                    f"{source.name}: {eval_fraction:.0%} of train carved by patient, stratified by label "
                    f"(val/ had {len(val)} files)"
                )
        candidates.extend(found)
    listing["eval_policy"] = "; ".join(listing["eval_policy"]) or "no train/val/test source"
    if calibration_from:
        available = sum(c.split == calibration_from for c in candidates)
        if not available:
            splits = sorted({c.split for c in candidates} - {"train", "eval"})
            raise PrepareError(
                f"--calibration-from {calibration_from}: no such split; splits to carve from: "
                f"{', '.join(splits) or 'none'}"
            )
        if calibration_size >= available:
            raise PrepareError(
                f"--calibration-size {calibration_size}: split {calibration_from} has only "
                f"{available} files, and some must stay to report on"
            )

    staging = f"{out}.staging"
    output.remove(staging)
    tf.io.gfile.makedirs(staging)
    runners.check(beam_args or DEFAULT_BEAM_ARGS)
    with beam.Pipeline(options=PipelineOptions(beam_args or DEFAULT_BEAM_ARGS)) as pipeline:
        build_pipeline(
            pipeline,
            candidates,
            carves_eval,
            staging,
            eval_fraction,
            seed,
            listing,
            patient_salt,
            allow_lateral,
            calibration_from,
            calibration_size,
        )
    report = audit.read_report(staging)
    try:
        audit.check_report(report, max_bad_fraction, strict)
    except PrepareError:
        rejected = f"{out}.rejected"
        output.remove(rejected)
        output.move_folder(staging, rejected)
        raise
    output.remove(out)  # only reached with --overwrite or an empty/absent folder
    output.move_folder(staging, out)
    return report
