"""Trainer input pipeline on real images: decoding, caching, training-only augmentation."""

import glob
import os
from typing import List

import numpy as np
import pytest
import tensorflow as tf

from trainer import augment, inputs
from trainer.preprocessing import decode_image

IMAGE_SIZE = 32


def real_images(shared_data: str, split: str, per_class: int, skip: int = 0) -> List[tuple]:
    """(encoded bytes, label) of the first real images of each class, NORMAL and PNEUMONIA interleaved."""
    by_class = [
        sorted(glob.glob(f"{shared_data}/chest_xray/{split}/{name}/*.jpeg"))[skip : skip + per_class]
        for name in ("NORMAL", "PNEUMONIA")
    ]
    return [(open(path, "rb").read(), label) for pair in zip(*by_class) for label, path in enumerate(pair)]


def write_split(folder: str, images: List[tuple]) -> str:
    """A gzipped TFRecord shard of (image, label) examples, as ExampleGen writes; returns its file pattern."""
    os.makedirs(folder, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(folder, "data.gz"), options="GZIP") as writer:
        for image, label in images:
            writer.write(
                tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
                            "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                        }
                    )
                ).SerializeToString()
            )
    return os.path.join(folder, "*")


@pytest.fixture(scope="module")
def split(shared_data, tmp_path_factory):
    images = real_images(shared_data, "train", per_class=4)
    return write_split(str(tmp_path_factory.mktemp("records")), images), images


def pixels_of(dataset: tf.data.Dataset) -> np.ndarray:
    return np.concatenate([pixels for pixels, _ in dataset.as_numpy_iterator()])


def test_validation_is_the_served_preprocessing_in_file_order(split):
    pattern, images = split
    dataset = inputs.make_dataset([pattern], IMAGE_SIZE, batch_size=3, training=False)
    expected = np.stack([decode_image(image, IMAGE_SIZE).numpy() for image, _ in images])
    np.testing.assert_array_equal(pixels_of(dataset), expected)
    labels = np.concatenate([label for _, label in dataset.as_numpy_iterator()])
    assert list(labels) == [label for _, label in images]


def test_cache_gives_the_same_batches(split):
    pattern, _ = split
    plain = inputs.make_dataset([pattern], IMAGE_SIZE, 4, training=False)
    cached = inputs.make_dataset([pattern], IMAGE_SIZE, 4, training=False, cache=True)
    np.testing.assert_array_equal(pixels_of(cached), pixels_of(plain))
    np.testing.assert_array_equal(pixels_of(cached), pixels_of(cached))  # second pass from the cache


def test_training_shuffles_without_changing_images_unless_augmented(split):
    pattern, images = split
    in_file_order = pixels_of(inputs.make_dataset([pattern], IMAGE_SIZE, 4, training=False)).sum(axis=(1, 2, 3))
    reference = np.sort(in_file_order)
    training = inputs.make_dataset([pattern], IMAGE_SIZE, 4, training=True)
    first, second = (pixels_of(training).sum(axis=(1, 2, 3)) for _ in range(2))  # two epochs
    np.testing.assert_allclose(np.sort(first), reference, rtol=1e-6)  # the same images
    assert not np.array_equal(first, in_file_order)  # in another order (8 images: 1 in 40,320 by chance; seeded)
    assert not np.array_equal(first, second)  # and another one each epoch

    augmented = pixels_of(inputs.make_dataset([pattern], IMAGE_SIZE, 4, training=True, augment=True))
    assert augmented.shape == (len(images), IMAGE_SIZE, IMAGE_SIZE, 1)
    assert augmented.min() >= 0.0 and augmented.max() <= 255.0
    assert not np.allclose(np.sort(augmented.sum(axis=(1, 2, 3))), reference, rtol=1e-3)


def test_augmentation_is_refused_outside_training(split):
    with pytest.raises(ValueError, match="training data only"):
        inputs.make_dataset([split[0]], IMAGE_SIZE, 4, training=False, augment=True)


def test_horizontal_flip_only_when_asked():
    def layer_types(augmentation):
        return {layer.__class__.__name__ for layer in augmentation.layers}

    assert layer_types(inputs.augmentation(0)) == {
        "RandomRotation",
        "RandomTranslation",
        "RandomZoom",
        "RandomBrightness",
        "RandomContrast",
    }
    assert "RandomFlip" in layer_types(inputs.augmentation(0, horizontal_flip=True))


def test_label_counts(split):
    assert inputs.label_counts([split[0]]) == (4, 4)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ValueError, match="no TFRecord files match"):
        inputs.make_dataset([str(tmp_path / "none*")], IMAGE_SIZE, 4, training=False)


def per_image_pixels(dataset: tf.data.Dataset) -> np.ndarray:
    """The batches' pixels, per image (training order differs between datasets)."""
    return pixels_of(dataset).reshape(-1, IMAGE_SIZE * IMAGE_SIZE)


@pytest.mark.parametrize("setting", [{"crop_min_area": 0.65}, {"acquisition": True}])
def test_per_image_augmentation_changes_every_image_anew_each_epoch(split, setting):
    pattern, images = split
    plain = np.stack([decode_image(image, IMAGE_SIZE).numpy().reshape(-1) for image, _ in images])
    dataset = inputs.make_dataset([pattern], IMAGE_SIZE, 4, training=True, augment=True, seed=3, **setting)
    first, second = per_image_pixels(dataset), per_image_pixels(dataset)  # two epochs of one dataset
    assert not np.allclose(first, second)  # new draws every epoch
    assert first.min() >= 0.0 and first.max() <= 255.0
    nearest = np.abs(first[:, None, :] - plain[None, :, :]).mean(axis=2).min(axis=1)
    assert (nearest > 0.5).all()  # no image passes through unchanged


@pytest.mark.parametrize("crop_min_area, acquisition", [(0.65, False), (1.0, True), (0.65, True)])
def test_per_image_transforms_repeat_for_a_seed_and_differ_between_seeds(split, crop_min_area, acquisition):
    """Stateless draws: a run is repeatable from its seed whatever order parallel decoding runs in (the Keras
    layers' jitter after batching is not: their generator advances in execution order)."""
    image = decode_image(split[1][0][0], IMAGE_SIZE)

    def transformed(seed):
        return augment.per_image(image, tf.constant(seed, tf.int64), crop_min_area, acquisition).numpy()

    np.testing.assert_array_equal(transformed([5, 9]), transformed([5, 9]))
    assert not np.allclose(transformed([5, 9]), transformed([6, 9]))


def test_random_resized_crop_keeps_a_centred_region_of_at_least_the_minimum_area():
    ramp = tf.tile(tf.range(IMAGE_SIZE, dtype=tf.float32)[tf.newaxis, :, tf.newaxis], [IMAGE_SIZE, 1, 1])
    for seed in range(20):
        cropped = augment.random_resized_crop(ramp, tf.constant([seed, 0], tf.int64), 0.65).numpy()
        span = cropped[0, -1, 0] - cropped[0, 0, 0]  # a horizontal ramp: how much of the width survives
        assert 0.65 * 0.9 * (IMAGE_SIZE - 1) - 2 <= span <= IMAGE_SIZE


def test_acquisition_jitter_keeps_the_anatomy(split):
    image = decode_image(split[1][0][0], IMAGE_SIZE)
    for seed in range(5):
        jittered = augment.acquisition_jitter(image, tf.constant([seed, 1], tf.int64)).numpy()
        assert jittered.shape == image.shape and 0.0 <= jittered.min() and jittered.max() <= 255.0
        # gamma, blur and noise move intensities but keep the picture: strongly correlated with the original
        assert np.corrcoef(jittered.reshape(-1), image.numpy().reshape(-1))[0, 1] > 0.8


def test_acquisition_augmentation_widens_brightness_and_contrast(split):
    narrow, wide = inputs.augmentation(0), inputs.augmentation(0, intensity_factor=inputs.WIDE_INTENSITY_FACTOR)
    assert narrow.layers[3].factor != wide.layers[3].factor


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"training": False, "acquisition": True}, "training data only"),
        ({"training": True, "crop_min_area": 0.7}, "need augment on"),
        ({"training": True, "augment": True, "crop_min_area": 0.0}, "crop_min_area must be in"),
    ],
)
def test_bad_augmentation_settings_are_refused(split, arguments, message):
    with pytest.raises(ValueError, match=message):
        inputs.make_dataset([split[0]], IMAGE_SIZE, 4, **arguments)
