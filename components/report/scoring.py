"""What the report's figures rest on: a split's records read back, scored by the exported model, and explained
by the rebuilt Keras model (Grad-CAM and its border attention).

Shared by the report, the ThresholdCalibrator and the CLI's tables, so they all score through the exported
`serving_default` signature, as TFMA and TF Serving do. Files go through tf.io.gfile: local or in a bucket.
"""

import dataclasses
import os
from collections import Counter
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from components.report import attention, gradcam, plots
from serving.repository import serving_model_dir
from trainer import models, signatures, task
from trainer.preprocessing import decode_image
from trainer.signatures import CLASS_NAMES

_FEATURES = {name: tf.io.FixedLenFeature([], tf.string) for name in ("image", "dataset", "source_path")}
_FEATURES["label"] = tf.io.FixedLenFeature([], tf.int64)


@dataclasses.dataclass
class SplitSample:
    """The first `max_images_per_split` records of one split, and the split's full class counts."""

    serialized: List[bytes] = dataclasses.field(default_factory=list)
    images: List[bytes] = dataclasses.field(default_factory=list)
    labels: List[int] = dataclasses.field(default_factory=list)
    sources: List[str] = dataclasses.field(default_factory=list)
    counts: Counter = dataclasses.field(default_factory=Counter)  # (dataset, label) -> images


class ReportError(Exception):
    """A report input is missing or does not fit the model contract."""


def model_info(model_uri: str) -> dict:
    """The exported model's threshold JSON: value, policy, validation figures, architecture, size, settings."""
    return signatures.read_metadata(serving_model_dir(model_uri))


def read_split(examples_uri: str, split: str, cap: int) -> SplitSample:
    """The first `cap` records of a split (what is scored and drawn), and the class counts of all of them."""
    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    if not files:
        raise ReportError(f"no records for split {split!r} under {examples_uri}")
    sample = SplitSample()
    for serialized in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        example = tf.io.parse_single_example(serialized, _FEATURES)
        label = int(example["label"])
        sample.counts[(example["dataset"].numpy().decode(), label)] += 1
        if len(sample.labels) < cap:
            sample.serialized.append(serialized)
            sample.images.append(example["image"].numpy())
            sample.labels.append(label)
            sample.sources.append(f"{example['dataset'].numpy().decode()}:{example['source_path'].numpy().decode()}")
    return sample


def serving_function(model_uri: str):
    """The exported `serving_default` signature, as TFMA and TF Serving see it: load once, score many splits."""
    return tf.saved_model.load(serving_model_dir(model_uri)).signatures["serving_default"]


def score(serve, serialized: List[bytes], batch_size: int = 32) -> Dict[str, np.ndarray]:
    """The numeric outputs of a `serving_function` (probability, threshold, OOD guard) for serialized tf.Examples."""
    batches = [
        serve(examples=tf.constant(serialized[i : i + batch_size])) for i in range(0, len(serialized), batch_size)
    ]
    if not batches:
        return {"probability": np.zeros(0, np.float32)}
    keys = [key for key, value in batches[0].items() if value.dtype != tf.string]
    return {key: np.concatenate([batch[key].numpy() for batch in batches]) for key in keys}


def predict(serve, serialized: List[bytes], batch_size: int = 32) -> np.ndarray:
    """Pneumonia probabilities of serialized tf.Examples from a `serving_function`."""
    return score(serve, serialized, batch_size)["probability"]


def ood_share(outputs: Dict[str, np.ndarray]) -> Optional[float]:
    """The share of images the model's OOD guard flags; None for a model exported without a guard."""
    if "in_distribution" not in outputs:
        return None
    return float(np.mean(~outputs["in_distribution"])) if outputs["in_distribution"].size else float("nan")


def sample_images(sample: SplitSample, image_size: int, per_class: int) -> Dict[str, List[np.ndarray]]:
    """Up to `per_class` decoded images of each class, for the sample grid."""
    grid: Dict[str, List[np.ndarray]] = {name: [] for name in CLASS_NAMES}
    for image, label in zip(sample.images, sample.labels):
        if len(grid[CLASS_NAMES[label]]) < per_class:
            grid[CLASS_NAMES[label]].append(decode_image(image, image_size).numpy()[:, :, 0])
    return {name: images for name, images in grid.items() if images}


def keras_model(model_uri: str, info: dict) -> Tuple[keras.Model, str]:
    """The trained Keras model (rebuilt from the registry plus its weights) and its Grad-CAM layer."""
    weights = task.keras_weights_path(serving_model_dir(model_uri))
    if not tf.io.gfile.exists(weights):
        raise ReportError(f"no Keras weights at {weights}: the Trainer writes them for Grad-CAM")
    architecture = info["architecture"]
    model = models.build(architecture, info["image_size"], **info.get("model_config", {}))
    model.load_weights(weights)
    return model, models.REGISTRY[architecture].gradcam_layer


def select(scores: plots.Scores, threshold: float, true_label: int, predicted_label: int, count: int) -> np.ndarray:
    """Indices of the `count` most confident predictions of one kind (the worst, for errors)."""
    predicted = (scores.probabilities >= threshold).astype(int)
    chosen = np.flatnonzero((scores.labels == true_label) & (predicted == predicted_label))
    # Confidence in the predicted class: high probability for PNEUMONIA, low for NORMAL.
    confidence = scores.probabilities[chosen] if predicted_label == 1 else -scores.probabilities[chosen]
    return chosen[np.argsort(-confidence, kind="stable")[:count]]


def explain(
    model: keras.Model,
    layer: str,
    image_size: int,
    sample: SplitSample,
    scores: plots.Scores,
    indices: np.ndarray,
    threshold: float,
) -> List[plots.Explained]:
    pixels = np.stack([decode_image(sample.images[i], image_size).numpy() for i in indices])
    cams, cams_plus_plus, probabilities = gradcam.heatmaps(model, layer, pixels, threshold)
    if not np.allclose(probabilities, scores.probabilities[indices], atol=1e-4):
        raise ReportError(
            "the Keras weights do not reproduce the exported model's probabilities "
            f"({probabilities} vs {scores.probabilities[indices]}): they belong to another model"
        )
    return [
        plots.Explained(
            pixels[n, :, :, 0],
            cams[n],
            cams_plus_plus[n],
            int(scores.labels[i]),
            float(scores.probabilities[i]),
            threshold,
            sample.sources[i],
        )
        for n, i in enumerate(indices)
    ]


def border_attention(
    model: keras.Model,
    layer: str,
    image_size: int,
    sample: SplitSample,
    scores: plots.Scores,
    threshold: float,
    batch_size: int = 32,
) -> Dict[str, attention.OutcomeShare]:
    """The Grad-CAM border share of every scored image of a split, averaged per outcome at the threshold."""
    shares = border_shares(model, layer, image_size, sample.images, threshold, batch_size)
    return attention.by_outcome(shares, scores.labels, scores.probabilities, threshold)


def border_shares(
    model: keras.Model, layer: str, image_size: int, images: List[bytes], threshold: float, batch_size: int = 32
) -> np.ndarray:
    """The Grad-CAM border share of each encoded image (explaining the class predicted at `threshold`)."""
    shares = [np.empty(0)]
    for start in range(0, len(images), batch_size):
        pixels = np.stack([decode_image(image, image_size).numpy() for image in images[start : start + batch_size]])
        cams, _, _ = gradcam.heatmaps(model, layer, pixels, threshold)
        shares.append(attention.border_share(cams))
    return np.concatenate(shares)
