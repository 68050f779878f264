"""Error analysis of one evaluated model: its mistakes at the served threshold, grouped by file-name family.

File names carry provenance the features do not: Kermany's NORMAL images come as `IM-…` and `NORMAL2-IM-…`,
the external set as `rsna_…` and `ieee8023_…`. Grouping errors by that family shows whether a model fails
on one acquisition batch rather than at random.
"""

import collections
import os
import re
from typing import List, Optional

import numpy as np

from pneumonia.analysis.tables import format_rows
from pneumonia.runs import scoring
from pneumonia.runs.store import RunLookupError, latest_evaluations
from trainer.signatures import CLASS_NAMES


def name_family(source_path: str) -> str:
    """The file name's fixed part: digit runs become `#` and the name is cut where a numbered part begins.
    `NORMAL2-IM-0201-0001.jpeg` -> `NORMAL#-IM`, `person12_virus_6.jpeg` -> `person#_virus`,
    `rsna_Normal-10151.jpeg` -> `rsna_Normal`, `ieee8023_5acb8ac5.jpeg` -> `ieee#`."""
    masked = re.sub(r"\d+", "#", os.path.splitext(os.path.basename(source_path))[0])
    return re.split(r"[-_.]#", masked, maxsplit=1)[0]


def family_rows(labels: np.ndarray, probabilities: np.ndarray, paths: List[str], value: float) -> List[List[str]]:
    """Header plus one row per (family, true class): images, errors at `value`, and the error rate."""
    counts = collections.Counter()
    errors = collections.Counter()
    for label, probability, path in zip(labels, probabilities, paths):
        key = (name_family(path), int(label))
        counts[key] += 1
        errors[key] += int((probability >= value) != bool(label))
    rows = [["family", "class", "images", "errors", "error rate"]]
    for family, label in sorted(counts):
        n, wrong = counts[(family, label)], errors[(family, label)]
        rows.append([family, CLASS_NAMES[label], str(n), str(wrong), f"{wrong / n:.3f}"])
    return rows


def worst_rows(
    labels: np.ndarray, probabilities: np.ndarray, paths: List[str], value: float, count: int
) -> List[List[str]]:
    """Header plus the `count` most confident mistakes at `value`."""
    wrong = np.flatnonzero((probabilities >= value) != labels.astype(bool))
    confidence = np.abs(probabilities[wrong] - value)
    rows = [["image", "class", "probability"]]
    for index in wrong[np.argsort(-confidence, kind="stable")[:count]]:
        rows.append([paths[index], CLASS_NAMES[int(labels[index])], f"{probabilities[index]:.3f}"])
    return rows


def errors_report(metadata_path: str, split: str, architecture: Optional[str], top: int, markdown: bool) -> str:
    """Per architecture (its latest evaluated model): error rates by file-name family on `split` at the model's
    own threshold, then its most confident mistakes."""
    evaluated = [item for item in latest_evaluations(metadata_path) if architecture in (None, item.architecture)]
    if not evaluated:
        raise RunLookupError(f"no evaluated {architecture} model in {metadata_path}")
    parts = []
    for item in evaluated:
        value = float(item.model["value"])
        labels, probabilities, paths = scoring.score_splits(item.examples_uri, [split], item.model_uri)[split]
        title = f"{item.architecture} on {split}, at its threshold {value:.3f}"
        parts += [
            f"**{title}**" if markdown else title,
            format_rows(family_rows(labels, probabilities, paths, value), markdown),
            format_rows(worst_rows(labels, probabilities, paths, value, top), markdown),
        ]
    return "\n\n".join(parts)
