"""Out-of-distribution guard: Mahalanobis distance of the pooled feature map to class-conditional Gaussians.

Lee et al. (2018): fit one Gaussian per class to the training images' features with a covariance shared
by the classes, and score an image by its distance to the nearest class mean. It needs no OOD examples,
no retraining and one matrix product per image, so it fits in every serving signature. The features are
the spatial mean of the architecture's Grad-CAM layer (its last feature map, which `explain_images`
computes anyway), not the penultimate layer's: the dense head is trained to map every image towards one
of two class directions, so photographs and documents land near the X-rays there, while the pooled
feature map still describes what the image contains (bench/ood_bench.py measures both; Lee et al. also
found earlier layers to detect better). The shared covariance is estimated with Ledoit-Wolf shrinkage,
because ReLU features have dead and collinear units that make the sample covariance singular. The
threshold is a high percentile of the validation images' distances: that share of in-distribution images
is flagged by construction, and nothing else is tuned.
"""

import dataclasses
from typing import Any, Dict, Iterable, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
from sklearn.covariance import ledoit_wolf

from trainer import explain
from trainer.config import TrainerConfig
from trainer.models import FEATURE_MAP

DEFAULT_PERCENTILE = TrainerConfig.ood_percentile  # the Trainer's setting, also for benchmarks and tests


@dataclasses.dataclass(frozen=True)
class OodGuard:
    """The fitted Gaussians (means [classes, D], shared precision [D, D]) and the distance threshold."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    percentile: float
    train_images: int
    validation_images: int

    def summary(self) -> Dict[str, Any]:
        """What the model's metadata records (the arrays live in the SavedModel's graph)."""
        return {
            "method": "mahalanobis_tied_covariance",
            "features": "spatial mean of the Grad-CAM feature map",
            "dimensions": int(self.means.shape[1]),
            "threshold": self.threshold,
            "validation_percentile": self.percentile,
            "train_images": self.train_images,
            "validation_images": self.validation_images,
        }


def pooled(feature_maps: Sequence[tf.Tensor]) -> tf.Tensor:
    """The guard's features [N, C]: the spatial mean of the feature map [N, H, W, C], or of each ensemble
    member's map, concatenated."""
    return tf.concat([tf.reduce_mean(feature_map, axis=[1, 2]) for feature_map in feature_maps], axis=-1)


def distances(features, means, precision) -> tf.Tensor:
    """[N] Mahalanobis distance of each feature row to the nearest class mean (TF op, works eagerly too)."""
    features = tf.convert_to_tensor(features, tf.float32)
    centred = features[:, tf.newaxis, :] - tf.convert_to_tensor(means, tf.float32)[tf.newaxis]  # [N, K, D]
    squared = tf.einsum("nkd,de,nke->nk", centred, tf.convert_to_tensor(precision, tf.float32), centred)
    return tf.sqrt(tf.maximum(tf.reduce_min(squared, axis=1), 0.0))


def fit_gaussians(features: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Class means and the shared precision matrix of `features` [N, D] with integer `labels` [N]."""
    classes = np.unique(labels)
    if len(classes) < 2 or min(np.sum(labels == c) for c in classes) < 2:
        raise ValueError("the OOD guard needs at least two training images of each class")
    features = features.astype(np.float64)
    means = np.stack([features[labels == c].mean(axis=0) for c in classes])
    centred = features - means[np.searchsorted(classes, labels)]
    covariance, _ = ledoit_wolf(centred, assume_centered=True)
    return means.astype(np.float32), np.linalg.pinv(covariance, hermitian=True).astype(np.float32)


def features(features_and_output: keras.Model, batches: Iterable) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities [N], guard features [N, C], labels [N]) over (pixels, labels) batches, in one pass of an
    `explain.feature_model`."""
    probabilities, pooled_maps, labels = [], [], []
    for pixels, batch_labels in batches:
        probability, *feature_maps = features_and_output(pixels, training=False)
        probabilities.append(np.reshape(probability, [-1]))
        pooled_maps.append(pooled(feature_maps).numpy())
        labels.append(np.reshape(batch_labels, [-1]))
    if not pooled_maps:
        raise ValueError("the OOD guard got no images")
    return np.concatenate(probabilities), np.concatenate(pooled_maps), np.concatenate(labels).astype(int)


def fit(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    validation_features: np.ndarray,
    percentile: float = DEFAULT_PERCENTILE,
) -> OodGuard:
    """Gaussians on the training features; threshold at `percentile` of the validation distances."""
    if not 0 < percentile <= 100:
        raise ValueError(f"OOD percentile must be in (0, 100], got {percentile}")
    if not len(validation_features):
        raise ValueError("the OOD guard needs validation images for its threshold")
    means, precision = fit_gaussians(train_features, train_labels)
    threshold = float(np.percentile(distances(validation_features, means, precision).numpy(), percentile))
    return OodGuard(means, precision, threshold, percentile, len(train_features), len(validation_features))


def fit_model(
    model: keras.Model,
    train_batches: Iterable,
    validation_batches: Iterable,
    percentile: float = DEFAULT_PERCENTILE,
    layer_name: str = FEATURE_MAP,
) -> Tuple[OodGuard, np.ndarray, np.ndarray]:
    """(guard, validation probabilities, validation labels) for a trained model with Grad-CAM layer
    `layer_name`, from one pass over each split's (pixels, labels) batches; the validation pass also serves
    the model's threshold."""
    features_and_output = explain.feature_model(model, layer_name)
    _, train_features, train_labels = features(features_and_output, train_batches)
    probabilities, validation_features, labels = features(features_and_output, validation_batches)
    return fit(train_features, train_labels, validation_features, percentile), probabilities, labels


def noise_guard(model: keras.Model, image_size: int, images: int = 32, seed: int = 0) -> OodGuard:
    """A guard fitted on random-noise images, for untrained models in tests and benchmarks: it has the
    shapes and cost of a real one, and no meaning."""
    pixels = np.random.default_rng(seed).uniform(0, 255, (images, image_size, image_size, 1)).astype(np.float32)
    labels, half = np.arange(images) % 2, images // 2
    return fit_model(model, [(pixels[:half], labels[:half])], [(pixels[half:], labels[half:])])[0]
