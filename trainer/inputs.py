"""tf.data input pipelines over the gzipped TFRecord splits written by ExampleGen."""

from typing import List, Tuple

import keras
import numpy as np
import tensorflow as tf

from trainer import augment as augment_ops
from trainer.preprocessing import decode_image

_FEATURES = {
    "image": tf.io.FixedLenFeature([], tf.string),
    "label": tf.io.FixedLenFeature([], tf.int64),
}
SHUFFLE_BUFFER = 1024  # decoded images: 64 MB at 128 px, 200 MB at 224 px
INTENSITY_FACTOR = 0.1  # brightness/contrast jitter
WIDE_INTENSITY_FACTOR = 0.25  # with acquisition augmentation: exposure varies more between sites than within one


def _files(file_patterns: List[str]) -> List[str]:
    files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
    if not files:
        raise ValueError(f"no TFRecord files match {file_patterns}")
    return files


def _records(file_patterns: List[str]) -> tf.data.Dataset:
    return tf.data.TFRecordDataset(_files(file_patterns), compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)


def augmentation(
    seed: int, horizontal_flip: bool = False, intensity_factor: float = INTENSITY_FACTOR
) -> keras.Sequential:
    """Training-only jitter on [0, 255] pixels: small rotations, shifts, zoom, brightness and contrast.

    No horizontal flip unless asked: a mirrored chest puts the heart on the wrong side.
    """
    steps = [
        keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed),  # about ±10 degrees
        keras.layers.RandomTranslation(0.05, 0.05, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
        keras.layers.RandomBrightness(intensity_factor, value_range=(0, 255), seed=seed + 3),
        keras.layers.RandomContrast(intensity_factor, seed=seed + 4),
    ]
    if horizontal_flip:
        steps.append(keras.layers.RandomFlip("horizontal", seed=seed + 5))
    return keras.Sequential(steps, name="augmentation")


def make_dataset(
    file_patterns: List[str],
    image_size: int,
    batch_size: int,
    training: bool,
    seed: int = 42,
    augment: bool = False,
    horizontal_flip: bool = False,
    cache: bool = False,
    crop_min_area: float = 1.0,
    acquisition: bool = False,
) -> tf.data.Dataset:
    """(pixels, label) batches: decoded in parallel, optionally cached in memory after decoding;
    for training shuffled every epoch and (with `augment`) jittered; in file order otherwise.

    With `augment`, `crop_min_area` < 1 adds a random-resized crop and `acquisition` the acquisition-style
    transforms of `trainer.augment` (per image, new draws every epoch) and a wider brightness/contrast range.
    """
    augment_ops.check_settings(crop_min_area)
    if (augment or acquisition or crop_min_area < 1.0) and not training:
        raise ValueError("augmentation is for training data only")
    if (acquisition or crop_min_area < 1.0) and not augment:
        raise ValueError("crop_min_area and acquisition augmentation need augment on")

    def parse(serialized):
        features = tf.io.parse_single_example(serialized, _FEATURES)
        return decode_image(features["image"], image_size), features["label"]

    dataset = _records(file_patterns).map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        dataset = dataset.cache()
    if training:
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    if acquisition or crop_min_area < 1.0:
        image_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip((dataset, image_seeds)).map(
            lambda example, image_seed: (
                augment_ops.per_image(example[0], image_seed, crop_min_area, acquisition),
                example[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
    dataset = dataset.batch(batch_size)
    if augment:
        jitter = augmentation(seed, horizontal_flip, WIDE_INTENSITY_FACTOR if acquisition else INTENSITY_FACTOR)
        dataset = dataset.map(
            lambda pixels, label: (tf.clip_by_value(jitter(pixels, training=True), 0.0, 255.0), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)


def label_counts(file_patterns: List[str]) -> Tuple[int, int]:
    """(NORMAL, PNEUMONIA) example counts, reading labels only."""
    labels = _records(file_patterns).map(
        lambda s: tf.io.parse_single_example(s, {"label": _FEATURES["label"]})["label"]
    )
    counts = np.bincount(np.fromiter(labels.as_numpy_iterator(), dtype=np.int64), minlength=2)
    return int(counts[0]), int(counts[1])
