"""Grad-CAM and Grad-CAM++ for any Keras functional model, given its last spatial feature-map layer.

Both explain the *predicted* class of a single sigmoid output, predicted at the model's own threshold
(the one the panels label errors at): the score is the logit of the pneumonia probability for a
PNEUMONIA prediction and its negative for a NORMAL one, because the probability saturates near 0 and 1
and its gradients vanish there.
"""
from typing import Tuple

import keras
import numpy as np
import tensorflow as tf

_EPSILON = 1e-7


def feature_model(model: keras.Model, layer_name: str) -> keras.Model:
    """A model returning (feature map [N, H, W, C], probability [N, 1]) from the same weights."""
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        raise ValueError(f"Grad-CAM layer {layer_name!r} is not a layer of model {model.name!r}") from None
    if len(layer.output.shape) != 4:
        raise ValueError(f"Grad-CAM layer {layer_name!r} outputs shape {tuple(layer.output.shape)}; it needs a "
                         f"spatial feature map [N, H, W, C] (reshape token sequences to a grid first)")
    return keras.Model(model.inputs, [layer.output, model.outputs[0]])


def _normalise(maps: tf.Tensor) -> tf.Tensor:
    """ReLU, then each map scaled to [0, 1] (an all-zero map stays zero)."""
    maps = tf.nn.relu(maps)
    peak = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
    return maps / tf.maximum(peak, _EPSILON)


def heatmaps(model: keras.Model, layer_name: str, pixels: np.ndarray,
             threshold: float = 0.5) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Grad-CAM, Grad-CAM++, probability) for a batch of model inputs [N, H, W, ...], each explaining the class
    predicted at `threshold` (PNEUMONIA when probability >= threshold).

    The maps are resized to the input's H x W and scaled to [0, 1]; probability is the model's
    output for the same pass.
    """
    features_and_output = feature_model(model, layer_name)
    pixels = tf.convert_to_tensor(pixels, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(pixels)  # the feature map is recorded even when no trainable variable precedes it
        features, probability = features_and_output(pixels, training=False)
        probability = tf.reshape(probability, [-1])
        clipped = tf.clip_by_value(probability, _EPSILON, 1.0 - _EPSILON)
        logit = tf.math.log(clipped) - tf.math.log(1.0 - clipped)
        score = tf.where(probability >= threshold, logit, -logit)
    gradients = tape.gradient(score, features)  # [N, h, w, C]; scores are independent per example

    # Grad-CAM: channel weights are the spatially averaged gradients.
    cam = tf.reduce_sum(tf.reduce_mean(gradients, axis=[1, 2], keepdims=True) * features, axis=-1)
    # Grad-CAM++ (Chattopadhay et al. 2018) with the exponential-score closed form for the
    # higher-order derivatives: alpha = g^2 / (2 g^2 + sum(A) g^3), weights = sum(alpha * relu(g)).
    squared, cubed = gradients ** 2, gradients ** 3
    activation_sum = tf.reduce_sum(features, axis=[1, 2], keepdims=True)
    denominator = 2.0 * squared + activation_sum * cubed
    alpha = squared / tf.where(tf.abs(denominator) > _EPSILON, denominator, tf.ones_like(denominator))
    weights = tf.reduce_sum(alpha * tf.nn.relu(gradients), axis=[1, 2], keepdims=True)
    cam_plus_plus = tf.reduce_sum(weights * features, axis=-1)

    size = pixels.shape[1:3]
    resized = [tf.image.resize(_normalise(m)[..., tf.newaxis], size, method="bilinear")[..., 0]
               for m in (cam, cam_plus_plus)]
    return resized[0].numpy(), resized[1].numpy(), probability.numpy()
