"""Out-of-distribution guard: Mahalanobis distance of the penultimate features to class-conditional Gaussians.

Lee et al. (2018): fit one Gaussian per class to the training images' penultimate features with a
covariance shared by the classes, and score an image by its distance to the nearest class mean. It needs
no OOD examples, no retraining and one matrix product per image, so it fits in every serving signature.
The features are the input of the `probability` layer: what the decision is made from. The shared
covariance is estimated with Ledoit-Wolf shrinkage, because ReLU features have dead and collinear units
that make the sample covariance singular. The threshold is a high percentile of the validation images'
distances: that share of in-distribution images is flagged by construction, and nothing else is tuned.
"""
import dataclasses
from typing import Any, Dict, Iterable, Tuple

import keras
import numpy as np
import tensorflow as tf
from sklearn.covariance import ledoit_wolf

PENULTIMATE_OF = "probability"  # the penultimate features are this layer's input
DEFAULT_PERCENTILE = 99.5


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
        return {"method": "mahalanobis_tied_covariance", "features": f"input of the {PENULTIMATE_OF!r} layer",
                "dimensions": int(self.means.shape[1]), "threshold": self.threshold,
                "validation_percentile": self.percentile, "train_images": self.train_images,
                "validation_images": self.validation_images}


def feature_model(model: keras.Model) -> keras.Model:
    """A model returning (probability [N, 1], penultimate features [N, D]) from the same weights."""
    return keras.Model(model.inputs, [model.outputs[0], model.get_layer(PENULTIMATE_OF).input])


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


def penultimate_features(features_model: keras.Model, batches: Iterable) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities [N], features [N, D], labels [N]) over (pixels, labels) batches, in one pass."""
    probabilities, features, labels = [], [], []
    for pixels, batch_labels in batches:
        probability, batch_features = features_model(pixels, training=False)
        probabilities.append(np.reshape(probability, [-1]))
        features.append(np.asarray(batch_features))
        labels.append(np.reshape(batch_labels, [-1]))
    if not features:
        raise ValueError("the OOD guard got no images")
    return np.concatenate(probabilities), np.concatenate(features), np.concatenate(labels).astype(int)


def fit(train_features: np.ndarray, train_labels: np.ndarray, validation_features: np.ndarray,
        percentile: float = DEFAULT_PERCENTILE) -> OodGuard:
    """Gaussians on the training features; threshold at `percentile` of the validation distances."""
    if not 0 < percentile <= 100:
        raise ValueError(f"OOD percentile must be in (0, 100], got {percentile}")
    if not len(validation_features):
        raise ValueError("the OOD guard needs validation images for its threshold")
    means, precision = fit_gaussians(train_features, train_labels)
    threshold = float(np.percentile(distances(validation_features, means, precision).numpy(), percentile))
    return OodGuard(means, precision, threshold, percentile, len(train_features), len(validation_features))
