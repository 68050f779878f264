"""One accepted image as the records store it: its tf.train.Example, and the shards it is written in."""

import dataclasses
import hashlib
import os
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf

from pneumonia.data.sources import LABEL_NAMES, Candidate
from serving import dicom

RECORDS_PER_SHARD = 1000


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
        return stable_hash(str(seed), self.candidate.dataset, self.candidate.source_path)


def stable_hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def to_example(record: Record, image: bytes):
    def bytes_feature(*values: bytes):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

    def int_feature(*values: int):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))

    candidate = record.candidate
    return tf.train.Example(
        features=tf.train.Features(
            feature={
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
            }
        )
    )


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}/data-{shard:05d}-of-{num_shards:05d}.tfrecord.gz"


def num_shards(count: int) -> int:
    return max(1, -(-count // RECORDS_PER_SHARD))


def read_split(data: str, split: str) -> Tuple[List[bytes], Optional[np.ndarray]]:
    """The encoded images of a prepared split (local or in a bucket) and their labels, None when the records carry
    none; ([], None) when the split has no shards."""
    files = sorted(tf.io.gfile.glob(os.path.join(data, split, "*.tfrecord.gz")))
    features = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64, -1)}
    images, labels = [], []
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        parsed = tf.io.parse_single_example(record, features)
        images.append(parsed["image"].numpy())
        labels.append(int(parsed["label"]))
    return images, (np.array(labels) if labels and min(labels) >= 0 else None)
