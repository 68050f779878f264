"""The prepare report (`prepare_report.json`): what was written, quarantined or skipped and why, the leakage
audit, and the checks that refuse a dataset before it replaces the last one."""

import collections
import json
import os
from typing import Dict, List

import tensorflow as tf

from pneumonia.data.records import Record
from pneumonia.data.sources import LABEL_NAMES, PrepareError

REPORT_NAME = "prepare_report.json"
FORMAT_VERSION = 5  # 5: calibration split and policy (4: DICOM features)


def summarise(
    records: List[Record], shards: List[str], quarantined: List[dict], duplicates: List[dict], listing: dict
) -> dict:
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
        "images_of_patients_in_train": {
            split: sum(r.patient_in_train for r in records if r.split == split) for split in evaluated
        },
        "counts": counts,
        "patients": {split: len(ids) for split, ids in sorted(patients.items())},
        "formats": dict(sorted(formats.items())),
        "shards": {split: sorted(s for s in shards if s.startswith(split + "/")) for split in sorted(counts)},
    }
    report["accounted"] = report["written"] + len(quarantined) + len(duplicates) == report["files_seen"]
    return report


def check_report(report: dict, max_bad_fraction: float, strict: bool) -> None:
    if not report["accounted"]:
        raise PrepareError(
            f"{report['files_seen']} files seen, but {report['written']} written + "
            f"{len(report['quarantined'])} quarantined + {len(report['duplicates'])} duplicates do not "
            f"add up: files were lost or counted twice (a bug; details in {REPORT_NAME})"
        )
    bad = len(report["quarantined"])
    if report["files_seen"] and bad / report["files_seen"] > max_bad_fraction:
        reasons = collections.Counter(item["reason"].split(":")[0] for item in report["quarantined"])
        common = ", ".join(f"{reason} ({count})" for reason, count in reasons.most_common(3))
        raise PrepareError(
            f"{bad} of {report['files_seen']} files quarantined, more than --max-bad-fraction "
            f"{max_bad_fraction:g}: {common}"
        )
    if strict and report["leaks"]:
        first = report["leaks"][0]
        raise PrepareError(
            f"--strict: {len(report['leaks'])} identical file(s) across splits, e.g. {first['path']} "
            f"= {first['duplicate_of']}"
        )
    if strict and report["patients_in_train_and_eval"]:
        raise PrepareError(
            f"--strict: {len(report['patients_in_train_and_eval'])} patient(s) in both train and "
            f"eval, e.g. {report['patients_in_train_and_eval'][0]}"
        )


def is_prepared(folder: str) -> bool:
    return tf.io.gfile.exists(os.path.join(folder, REPORT_NAME))


def read_report(folder: str) -> dict:
    with tf.io.gfile.GFile(os.path.join(folder, REPORT_NAME)) as f:
        return json.load(f)


def prepared_splits(folder: str) -> List[str]:
    """Every split the prepared data holds: train, eval and test first, then the others by name."""
    shards = read_report(folder)["shards"]
    fixed = ["train", "eval", "test"]
    return [split for split in fixed if split in shards] + sorted(set(shards) - set(fixed))


def summary(report: dict) -> str:
    """The one-screen summary printed after a prepare."""
    lines = [
        f"files seen {report['files_seen']}: written {report['written']}, quarantined "
        f"{len(report['quarantined'])}, duplicates skipped {len(report['duplicates'])} "
        f"({'all accounted for' if report['accounted'] else 'NOT ALL ACCOUNTED FOR'})"
    ]
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
            lines.append(
                f"  {split}: {len(shared)} patient ID(s) also in train, "
                f"{report['images_of_patients_in_train'][split]} image(s) (slice patient_in_train=1)"
            )
    for item in report["quarantined"][:10]:
        lines.append(f"  quarantined {item['path']}: {item['reason']}")
    if len(report["quarantined"]) > 10:
        lines.append(f"  ... {len(report['quarantined']) - 10} more quarantined files in {REPORT_NAME}")
    return "\n".join(lines)
