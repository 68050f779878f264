"""Grad-CAM and Grad-CAM++ as TensorFlow ops, so the served model explains its own answers.

One implementation for the report (eager, on the Keras model) and the `explain_images` signature
(in the SavedModel's graph). Both explain the class predicted at the model's threshold, from a single
sigmoid output: the score is the logit of the pneumonia probability for a PNEUMONIA prediction and its
negative for a NORMAL one, because the probability saturates near 0 and 1 and its gradients vanish there.
"""

from typing import List, Tuple

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
    """A model returning (probability [N, 1], feature map [N, H, W, C], ...) from the same weights: the map of
    layer `layer_name`, or one map per member of an ensemble, named `<layer_name>_0`, `<layer_name>_1`, ..."""
    maps = models.feature_map_layers(model, layer_name)
    for layer in maps:
        if len(layer.output.shape) != 4:
            raise ValueError(
                f"Grad-CAM layer {layer.name!r} outputs shape {tuple(layer.output.shape)}; it needs a "
                f"spatial feature map [N, H, W, C] (reshape token sequences to a grid first)"
            )
    return keras.Model(model.inputs, [model.outputs[0], *(layer.output for layer in maps)])


def predicted_class_score(probability: tf.Tensor, threshold) -> tf.Tensor:
    """The logit for a PNEUMONIA prediction (probability >= threshold), its negative for NORMAL."""
    clipped = tf.clip_by_value(probability, EPSILON, 1.0 - EPSILON)
    logit = tf.math.log(clipped) - tf.math.log(1.0 - clipped)
    return tf.where(probability >= threshold, logit, -logit)


def _scaled(maps: tf.Tensor) -> tf.Tensor:
    """Each map [N, h, w] scaled to peak 1 (an all-zero map stays zero)."""
    return maps / tf.maximum(tf.reduce_max(maps, axis=[1, 2], keepdims=True), EPSILON)


def weighted_maps(features: tf.Tensor, gradients: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    """(Grad-CAM, Grad-CAM++) [N, h, w] at the feature map's resolution, after ReLU, before scaling."""
    # Grad-CAM: channel weights are the spatially averaged gradients.
    cam = tf.reduce_sum(tf.reduce_mean(gradients, axis=[1, 2], keepdims=True) * features, axis=-1)
    # Grad-CAM++ (Chattopadhay et al. 2018) with the exponential-score closed form for the
    # higher-order derivatives: alpha = g^2 / (2 g^2 + sum(A) g^3), weights = sum(alpha * relu(g)).
    squared, cubed = gradients**2, gradients**3
    activation_sum = tf.reduce_sum(features, axis=[1, 2], keepdims=True)
    denominator = 2.0 * squared + activation_sum * cubed
    alpha = squared / tf.where(tf.abs(denominator) > EPSILON, denominator, tf.ones_like(denominator))
    weights = tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=[1, 2], keepdims=True)
    return tf.nn.relu(cam), tf.nn.relu(tf.reduce_sum(weights * features, axis=-1))


def heatmaps(
    features_and_output: keras.Model, pixels: tf.Tensor, threshold
) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, List[tf.Tensor]]:
    """(Grad-CAM, Grad-CAM++, probability [N], feature maps) for pixels [N, S, S, 1] from one pass of a
    `feature_model`; the maps [N, S, S] are in [0, 1] over the input (over the part of it the model sees, when
    it crops).

    Each feature map's weighted map, after ReLU, is resized bilinearly to the model's view, then scaled to peak 1.
    Several maps (an ensemble's members) are summed there before scaling: each member's positive evidence,
    weighted by its gradient, that is by its share of the averaged logit; members of coprime grids need no
    common grid.
    """
    pixels = tf.convert_to_tensor(pixels, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(pixels)  # the feature maps are recorded even when no trainable variable precedes them
        probability, *features = features_and_output(pixels, training=False)
        probability = tf.reshape(probability, [-1])
        score = predicted_class_score(probability, threshold)
    gradients = tape.gradient(score, features)  # [N, h, w, C] each; scores are independent per example
    size = int(pixels.shape[1])
    offset, kept = models.crop_box(size, models.view_crop(features_and_output))
    cams, cams_plus_plus = zip(*(weighted_maps(map_, gradient) for map_, gradient in zip(features, gradients)))
    cam, cam_plus_plus = (
        _on_input(_scaled(tf.add_n([_resized(m, kept) for m in maps])), size, offset) for maps in (cams, cams_plus_plus)
    )
    return cam, cam_plus_plus, probability, features


def _resized(maps: tf.Tensor, side: int) -> tf.Tensor:
    return tf.image.resize(maps[..., tf.newaxis], [side, side], method="bilinear")[..., 0]


def _on_input(maps: tf.Tensor, size: int, offset: int) -> tf.Tensor:
    """Maps [N, kept, kept] over a model's central crop -> [N, size, size] over its input: the cut border is 0."""
    after = size - int(maps.shape[1]) - offset
    return tf.pad(maps, [[0, 0], [offset, after], [offset, after]])


def served_heatmap(maps: tf.Tensor, image_size: int) -> tf.Tensor:
    """Input-sized maps [N, S, S] -> the served [N, S/4, S/4]: each value the mean of its 4 x 4 block."""
    side = heatmap_size(image_size)
    return tf.image.resize(maps[..., tf.newaxis], [side, side], method="area")[..., 0]
