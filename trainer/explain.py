"""Grad-CAM and Grad-CAM++ as TensorFlow ops, so the served model explains its own answers.

One implementation for the report (eager, on the Keras model) and the `explain_images` signature
(in the SavedModel's graph). Both explain the class predicted at the model's threshold, from a single
sigmoid output: the score is the logit of the pneumonia probability for a PNEUMONIA prediction and its
negative for a NORMAL one, because the probability saturates near 0 and 1 and its gradients vanish there.
"""
from typing import Tuple

import keras
import tensorflow as tf

from trainer import models

EPSILON = 1e-7
# The served heatmap's side, as a fraction of the model's input side: 56 x 56 at 224 px. The finest
# Grad-CAM layer of any architecture is 52 x 52 (cnn, cnn_transformer), so a finer map would only add
# interpolated values, while 4x the side would make every REST answer ~16x larger.
HEATMAP_REDUCTION = 4


def heatmap_size(image_size: int) -> int:
    return -(-image_size // HEATMAP_REDUCTION)


def feature_model(model: keras.Model, layer_name: str) -> keras.Model:
    """A model returning (probability [N, 1], feature map [N, H, W, C]) from the same weights."""
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        raise ValueError(f"Grad-CAM layer {layer_name!r} is not a layer of model {model.name!r}") from None
    if len(layer.output.shape) != 4:
        raise ValueError(f"Grad-CAM layer {layer_name!r} outputs shape {tuple(layer.output.shape)}; it needs a "
                         f"spatial feature map [N, H, W, C] (reshape token sequences to a grid first)")
    return keras.Model(model.inputs, [model.outputs[0], layer.output])


def predicted_class_score(probability: tf.Tensor, threshold) -> tf.Tensor:
    """The logit for a PNEUMONIA prediction (probability >= threshold), its negative for NORMAL."""
    clipped = tf.clip_by_value(probability, EPSILON, 1.0 - EPSILON)
    logit = tf.math.log(clipped) - tf.math.log(1.0 - clipped)
    return tf.where(probability >= threshold, logit, -logit)


def _normalise(maps: tf.Tensor) -> tf.Tensor:
    """ReLU, then each map scaled to [0, 1] (an all-zero map stays zero)."""
    maps = tf.nn.relu(maps)
    peak = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
    return maps / tf.maximum(peak, EPSILON)


def weighted_maps(features: tf.Tensor, gradients: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(Grad-CAM, Grad-CAM++) [N, h, w] at the feature map's resolution, each scaled to [0, 1]."""
    # Grad-CAM: channel weights are the spatially averaged gradients.
    cam = tf.reduce_sum(tf.reduce_mean(gradients, axis=[1, 2], keepdims=True) * features, axis=-1)
    # Grad-CAM++ (Chattopadhay et al. 2018) with the exponential-score closed form for the
    # higher-order derivatives: alpha = g^2 / (2 g^2 + sum(A) g^3), weights = sum(alpha * relu(g)).
    squared, cubed = gradients ** 2, gradients ** 3
    activation_sum = tf.reduce_sum(features, axis=[1, 2], keepdims=True)
    denominator = 2.0 * squared + activation_sum * cubed
    alpha = squared / tf.where(tf.abs(denominator) > EPSILON, denominator, tf.ones_like(denominator))
    weights = tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=[1, 2], keepdims=True)
    cam_plus_plus = tf.reduce_sum(weights * features, axis=-1)
    return _normalise(cam), _normalise(cam_plus_plus)


def heatmaps(features_and_output: keras.Model, pixels: tf.Tensor,
             threshold) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(Grad-CAM, Grad-CAM++, probability [N], feature map) for pixels [N, S, S, 1] from one pass of a
    `feature_model`; the maps [N, S, S] are in [0, 1], resized bilinearly to the input's size (to the part of
    it the model sees, when it crops)."""
    pixels = tf.convert_to_tensor(pixels, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(pixels)  # the feature map is recorded even when no trainable variable precedes it
        probability, features = features_and_output(pixels, training=False)
        probability = tf.reshape(probability, [-1])
        score = predicted_class_score(probability, threshold)
    gradients = tape.gradient(score, features)  # [N, h, w, C]; scores are independent per example
    size = int(pixels.shape[1])
    cam, cam_plus_plus = (_on_input(m, size, models.view_crop(features_and_output))
                          for m in weighted_maps(features, gradients))
    return cam, cam_plus_plus, probability, features


def _on_input(maps: tf.Tensor, size: int, central_crop: float) -> tf.Tensor:
    """Feature-grid maps [N, h, w] -> [N, size, size] over the input image: a model that crops its input
    (`central_crop` < 1) saw only the central box, so the map is placed there and the cut border is zero."""
    offset, kept = models.crop_box(size, central_crop)
    resized = tf.image.resize(maps[..., tf.newaxis], [kept, kept], method="bilinear")
    return tf.pad(resized, [[0, 0], [offset, size - kept - offset], [offset, size - kept - offset], [0, 0]])[..., 0]


def served_heatmap(maps: tf.Tensor, image_size: int) -> tf.Tensor:
    """Input-sized maps [N, S, S] -> the served [N, S/4, S/4]: each value the mean of its 4 x 4 block."""
    side = heatmap_size(image_size)
    return tf.image.resize(maps[..., tf.newaxis], [side, side], method="area")[..., 0]
