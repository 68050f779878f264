"""Labels that arrive after the answers (a radiologist's read, a culture): joined to the logged images by id, and
the labelled images written back out as a site folder that `pneumonia prepare` ingests.

The labels file is a CSV with columns `id` and `label` (NORMAL or PNEUMONIA, or 0 or 1); an id is what the log
records: the request id (`<id>/<index>` for a request of several images) or, for the DICOM node, the hashed SOP
Instance UID.
"""

import csv
import io
import os
from typing import Iterable, Tuple

import pandas as pd
import tensorflow as tf

from pneumonia.data.output import move_folder, remove
from pneumonia.data.sources import LABELS
from pneumonia.monitoring.logs import MonitorError
from serving import image_stats

SHOWN_IDS = 3


def read_labels(path: str, logged_ids: Iterable[str]) -> pd.Series:
    """id -> 0 or 1; every id must be one the logs hold."""
    try:
        with tf.io.gfile.GFile(path) as f:
            rows = list(csv.DictReader(io.StringIO(f.read())))
    except (tf.errors.OpError, UnicodeDecodeError, csv.Error) as error:
        raise MonitorError(f"cannot read labels {path}: {getattr(error, 'message', error)}")
    if not rows or not {"id", "label"} <= set(rows[0]):
        raise MonitorError(f"labels {path} must be a CSV with a header row holding the columns id and label")
    values = {**LABELS, "0": 0, "1": 1}
    bad = [row for row in rows if (row["label"] or "").strip().upper() not in values]
    if bad:
        raise MonitorError(
            f"labels {path}: {len(bad)} row(s) with a label other than NORMAL, PNEUMONIA, 0 or 1, e.g. "
            f"{bad[0]['id']!r}: {bad[0]['label']!r}"
        )
    labels = pd.Series(
        {row["id"].strip(): values[row["label"].strip().upper()] for row in rows}, dtype=int, name="label"
    )
    if len(labels) != len(rows):
        raise MonitorError(f"labels {path} gives some ids more than one label")
    unknown = sorted(set(labels.index) - set(logged_ids))
    if unknown:
        raise MonitorError(
            f"labels {path}: {len(unknown)} id(s) not in the request logs, e.g. {', '.join(unknown[:SHOWN_IDS])}"
        )
    return labels


def _file_name(image_id: str, image: bytes) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in image_id) + "." + image_stats.image_format(image)


def export_labelled(records: pd.DataFrame, labels: pd.Series, folder: str) -> Tuple[int, int]:
    """Writes folder/NORMAL/ and folder/PNEUMONIA/ with the labelled images the log holds, whole or not at all
    (built aside, then moved into place); returns (images written, labelled images logged without their image)."""
    if tf.io.gfile.exists(folder):
        raise MonitorError(f"--export-labelled {folder} already exists: choose a new folder")
    labelled = records[records.request_id.isin(labels.index)]
    with_image = labelled[labelled.image.notna()]
    if with_image.empty:
        raise MonitorError(
            f"none of the {len(labelled)} labelled images was logged with its image: the log holds statistics only "
            "(log_collector_config type tfrecord_with_images logs images, see docs/serving/security.md)"
        )
    staging = f"{folder.rstrip('/')}.partial-{os.getpid()}"
    names = {value: name for name, value in LABELS.items()}
    try:
        for row in with_image.itertuples():
            target = os.path.join(staging, names[int(labels[row.request_id])], _file_name(row.request_id, row.image))
            tf.io.gfile.makedirs(os.path.dirname(target))
            with tf.io.gfile.GFile(target, "wb") as f:
                f.write(row.image)
        move_folder(staging, folder)
    finally:
        remove(staging)
    return len(with_image), len(labelled) - len(with_image)
