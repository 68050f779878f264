"""Training-only augmentation aimed at acquisition cues, per image and reproducible from the run's seed.

The models rank their own hospital's images almost perfectly and fall elsewhere; Grad-CAM puts their
attention on film edges, collimation borders and markers. These transforms vary how a film was *taken*
(where its edges fall, exposure and processing, sharpness, detector noise, compression) while keeping what
the lungs show, so that those cues stop predicting the label. Each transform is drawn with stateless ops
from a per-image seed, so a run is repeatable and parallel decoding cannot reorder the randomness.
"""

import math

import tensorflow as tf

CROP_ASPECT_RANGE = (0.9, 1.1)  # small aspect jitter: a chest squashed further than this is a new anatomy
GAMMA_RANGE = (0.7, 1.5)  # drawn log-uniformly: as often darker as lighter
SHARPEN_RANGE = (-1.0, 1.0)  # -1: a 3x3 Gaussian blur; +1: unsharp masking by the same kernel
JPEG_QUALITY_RANGE = (30, 95)
NOISE_STD_MAX = 0.03  # of the full intensity range: from clean to a noisy portable detector
# A list, not a tensor: a tensor made at import starts TensorFlow, and MultiWorkerMirroredStrategy (created in
# run_fn, after TFX imports this module) must configure it first.
_BLUR_KERNEL = [[1 / 16, 2 / 16, 1 / 16], [2 / 16, 4 / 16, 2 / 16], [1 / 16, 2 / 16, 1 / 16]]


def random_resized_crop(image: tf.Tensor, seed: tf.Tensor, min_area: float) -> tf.Tensor:
    """A random crop covering `min_area` to all of the image, resized back: the border and any marker in it
    move or leave the frame. `image` is [H, W, C] float; the result has its shape."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=CROP_ASPECT_RANGE,
        area_range=(min_area, 1.0),
        max_attempts=20,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, size)
    resized = tf.image.resize(crop, tf.shape(image)[:2], method="bilinear", antialias=True)
    return tf.ensure_shape(resized, image.shape)


def _blur(image: tf.Tensor) -> tf.Tensor:
    kernel = tf.reshape(tf.constant(_BLUR_KERNEL, tf.float32), [3, 3, 1, 1])
    padded = tf.pad(image[tf.newaxis], [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
    return tf.nn.depthwise_conv2d(padded, tf.tile(kernel, [1, 1, image.shape[-1], 1]), [1, 1, 1, 1], "VALID")[0]


def acquisition_jitter(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Gamma, blur or sharpen, JPEG re-encoding at a random quality and Gaussian noise, on [0, 255] pixels."""
    gamma_seed, sharpen_seed, jpeg_seed, noise_std_seed, noise_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 5)
    )
    unit = tf.clip_by_value(image / 255.0, 0.0, 1.0)
    gamma = tf.exp(tf.random.stateless_uniform([], gamma_seed, math.log(GAMMA_RANGE[0]), math.log(GAMMA_RANGE[1])))
    unit = tf.pow(unit, gamma)
    amount = tf.random.stateless_uniform([], sharpen_seed, *SHARPEN_RANGE)
    unit = tf.clip_by_value(unit + amount * (unit - _blur(unit)), 0.0, 1.0)
    unit = tf.image.stateless_random_jpeg_quality(unit, *JPEG_QUALITY_RANGE, seed=jpeg_seed)
    noise_std = tf.random.stateless_uniform([], noise_std_seed, 0.0, NOISE_STD_MAX)
    unit = unit + noise_std * tf.random.stateless_normal(tf.shape(unit), noise_seed)
    return tf.ensure_shape(tf.clip_by_value(unit, 0.0, 1.0) * 255.0, image.shape)


def per_image(image: tf.Tensor, seed: tf.Tensor, crop_min_area: float, acquisition: bool) -> tf.Tensor:
    """The configured per-image transforms, each from its own part of `seed` (shape [2], int64)."""
    crop_seed, acquisition_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if crop_min_area < 1.0:
        image = random_resized_crop(image, crop_seed, crop_min_area)
    if acquisition:
        image = acquisition_jitter(image, acquisition_seed)
    return image


def check_settings(crop_min_area: float) -> None:
    if not 0.0 < crop_min_area <= 1.0:
        raise ValueError(f"crop_min_area must be in (0, 1] (1 turns the random-resized crop off), got {crop_min_area}")
