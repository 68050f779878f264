"""The patient carves, as pure functions: validation from train, and the site's calibration sample.

Whole patients move, never single images, so no patient is on both sides of a split; the order is a seeded
hash, so the same input always gives the same carve.
"""

import collections
import dataclasses
from typing import Dict, List, Tuple

from pipeline.config import CALIBRATION_SPLIT
from pneumonia.data.records import Record, stable_hash


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
        for patient in sorted(patients, key=lambda p: stable_hash(str(seed), p)):
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
    for stratum in by_remainder[: size - sum(targets.values())]:
        targets[stratum] += 1
    chosen = set()
    for stratum in sorted(strata):
        patients, taken = strata[stratum], 0
        for patient in sorted(patients, key=lambda p: stable_hash(str(seed), CALIBRATION_SPLIT, p)):
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
