"""Grad-CAM and Grad-CAM++ for any Keras functional model, given its last spatial feature-map layer.

The maps are the served model's own (`trainer.explain`, which `explain_images` runs in the graph), for
the class predicted at the model's threshold, at the input's full resolution for the report's figures.
"""

from typing import Tuple

import keras
import numpy as np

from trainer import explain


def heatmaps(
    model: keras.Model, layer_name: str, pixels: np.ndarray, threshold: float = 0.5
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Grad-CAM, Grad-CAM++, probability) for a batch of model inputs [N, H, W, ...].

    The maps are resized to the input's H x W and scaled to [0, 1]; probability is the model's
    output for the same pass.
    """
    cam, cam_plus_plus, probability, _ = explain.heatmaps(explain.feature_model(model, layer_name), pixels, threshold)
    return cam.numpy(), cam_plus_plus.numpy(), probability.numpy()
