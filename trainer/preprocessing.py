"""Image preprocessing shared by training and every serving signature (no train/serve skew)."""

import tensorflow as tf

from trainer.pixel_budget import check_pixel_budget


def decode_image(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Encoded JPEG/PNG bytes -> float32 [image_size, image_size, 1] grayscale in [0, 255].

    Squashes to a square without keeping the aspect ratio, as the data set's images were made. Images
    whose header declares more than the pixel budget are refused before decoding (INVALID_ARGUMENT).
    """
    image = tf.io.decode_image(check_pixel_budget(encoded), channels=1, dtype=tf.uint8, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size], method="bilinear", antialias=True)
    return tf.ensure_shape(image, [image_size, image_size, 1])


def decode_batch(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """A batch of encoded images (shape [N]) -> float32 [N, image_size, image_size, 1]."""
    return tf.map_fn(
        lambda item: decode_image(item, image_size),
        encoded,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 1], tf.float32),
    )
