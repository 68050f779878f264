"""tf.data input pipelines over the gzipped TFRecord splits written by ExampleGen."""
from typing import List, Tuple

import numpy as np
import tensorflow as tf

from trainer.preprocessing import decode_image

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}


def _files(file_patterns: List[str]) -> List[str]:
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"no TFRecord files match {file_patterns}")
    return files


def _records(file_patterns: List[str]) -> tf.data.Dataset:
    return tf.data.TFRecordDataset(_files(file_patterns), compression_type="GZIP",
                                   num_parallel_reads=tf.data.AUTOTUNE)


def make_dataset(file_patterns: List[str], image_size: int, batch_size: int, training: bool,
                 seed: int = 42) -> tf.data.Dataset:
    """(pixels, label) batches; shuffled only for training, in file order otherwise."""
    dataset = _records(file_patterns)
    if training:
        dataset = dataset.shuffle(2048, seed=seed, reshuffle_each_iteration=True)

    def parse(serialized):
        features = tf.io.parse_single_example(serialized, _FEATURES)
        return decode_image(features["image"], image_size), features["label"]

    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=not training)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def label_counts(file_patterns: List[str]) -> Tuple[int, int]:
    """(NORMAL, PNEUMONIA) example counts, reading labels only."""
    labels = _records(file_patterns).map(
        lambda s: tf.io.parse_single_example(s, {"label": _FEATURES["label"]})["label"])
    counts = np.bincount(np.fromiter(labels.as_numpy_iterator(), dtype=np.int64), minlength=2)
    return int(counts[0]), int(counts[1])
