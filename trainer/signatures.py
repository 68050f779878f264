"""All serving signatures of the exported SavedModel, in one place.

`serving_default` takes serialized tf.Example (TFMA, Predict with examples); `predict_images` takes
encoded image bytes (gRPC Predict, REST b64). Both decode inside the graph and return `probability`,
`label` (at the tuned threshold) and `threshold`, one value per input, plus `decision_score`: the
probability mapped monotonically so that the tuned threshold lands on 0.5, which lets TFMA (whose
thresholds are fixed when the pipeline is defined) report every metric at the model's own threshold too.
Both also return the out-of-distribution guard (trainer/ood.py): `ood_score`, `ood_threshold` and
`in_distribution` (False: the image is unlike the training X-rays, and `label`, which keeps its meaning,
is no reliable answer).

`explain_images` takes encoded images like `predict_images` and adds `gradcam` and `gradcam_plus_plus`:
float32 [N, S/4, S/4] maps in [0, 1] for the class predicted at the threshold (trainer/explain.py).

`classify` is the classification signature TF Serving's Classify API requires (its classifier.cc):
method name `tensorflow/serving/classify`, one input `inputs` of serialized tf.Example, outputs
`classes` and `scores`, each [batch, 2] with columns NORMAL and PNEUMONIA.
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

import keras
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.python.saved_model import fingerprinting_utils

from serving.repository import THRESHOLD_ASSET, threshold_file
from trainer import explain, ood
from trainer.models import FEATURE_MAP, REGISTRY
from trainer.pixel_budget import MAX_PIXELS
from trainer.preprocessing import decode_batch
from trainer.threshold import Threshold

CLASS_NAMES = ("NORMAL", "PNEUMONIA")
CLASSIFY_SIGNATURE = "classify"
PROBABILITY_OUTPUT = "probability"
DECISION_OUTPUT = "decision_score"  # what TFMA's at-threshold metrics read
DECISION_MARGIN = 1e-6  # `decision_score` keeps this far from 0.5, beyond TFMA's 1e-7 comparison slack


def _images(serialized_examples: tf.Tensor) -> tf.Tensor:
    return tf.io.parse_example(serialized_examples, {"image": tf.io.FixedLenFeature([], tf.string)})["image"]


class PneumoniaModule(tf.Module):
    def __init__(
        self,
        model: keras.Model,
        image_size: int,
        threshold: Threshold,
        asset_path: str,
        gradcam_layer: str,
        guard: ood.OodGuard,
    ):
        super().__init__()
        # One pass gives the probability and the feature map(s) that both Grad-CAM and the OOD guard read.
        self.model = explain.feature_model(model, gradcam_layer)
        self.image_size = image_size
        self.threshold_value = tf.constant(threshold.value, tf.float32)
        self.threshold_asset = tf.saved_model.Asset(asset_path)
        # Variables, not constants: saved in the checkpoint, so `read_guard` can give them to a re-export.
        self.ood_means = tf.Variable(guard.means, trainable=False, name="ood_means")
        self.ood_precision = tf.Variable(guard.precision, trainable=False, name="ood_precision")
        self.ood_threshold = tf.Variable(guard.threshold, dtype=tf.float32, trainable=False, name="ood_threshold")

    def _forward(self, encoded: tf.Tensor):
        """(probability [N], Grad-CAM feature maps) of encoded images."""
        probability, *feature_maps = self.model(decode_batch(encoded, self.image_size), training=False)
        return tf.reshape(probability, [-1]), feature_maps

    def _predict(self, encoded: tf.Tensor):
        return self._answer(*self._forward(encoded))

    def _answer(self, probability: tf.Tensor, feature_maps: List[tf.Tensor]):
        """The outputs `serving_default`, `predict_images` and `explain_images` share."""
        threshold = tf.fill(tf.shape(probability), self.threshold_value)
        positive = probability >= threshold
        label = tf.where(positive, CLASS_NAMES[1], CLASS_NAMES[0])
        above = tf.math.divide_no_nan(probability - threshold, 1.0 - threshold)
        below = tf.math.divide_no_nan(probability, threshold)
        decision_score = tf.where(
            positive,
            0.5 + DECISION_MARGIN + (0.5 - DECISION_MARGIN) * above,
            0.5 * tf.minimum(below, 1.0 - DECISION_MARGIN),
        )
        ood_score = ood.distances(ood.pooled(feature_maps), self.ood_means, self.ood_precision)
        return {
            PROBABILITY_OUTPUT: probability,
            "label": label,
            "threshold": threshold,
            DECISION_OUTPUT: tf.clip_by_value(decision_score, 0.0, 1.0),
            "ood_score": ood_score,
            "ood_threshold": tf.fill(tf.shape(probability), self.ood_threshold),
            "in_distribution": ood_score <= self.ood_threshold,
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        return self._predict(_images(examples))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=tf.saved_model.CLASSIFY_INPUTS)])
    def classify(self, inputs):
        probability, _ = self._forward(_images(inputs))
        classes = tf.tile(tf.constant([CLASS_NAMES]), [tf.shape(probability)[0], 1])
        return {
            tf.saved_model.CLASSIFY_OUTPUT_CLASSES: classes,
            tf.saved_model.CLASSIFY_OUTPUT_SCORES: tf.stack([1.0 - probability, probability], axis=1),
        }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def predict_images(self, images):
        return self._predict(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def explain_images(self, images):
        pixels = decode_batch(images, self.image_size)
        cam, cam_plus_plus, probability, feature_maps = explain.heatmaps(self.model, pixels, self.threshold_value)
        return {
            **self._answer(probability, feature_maps),
            "gradcam": explain.served_heatmap(cam, self.image_size),
            "gradcam_plus_plus": explain.served_heatmap(cam_plus_plus, self.image_size),
        }


def export(
    model: keras.Model,
    export_dir: str,
    image_size: int,
    threshold: Threshold,
    work_dir: str,
    architecture: str,
    model_config: Dict[str, Any],
    training: Optional[Dict[str, Any]] = None,
    *,
    guard: ood.OodGuard,
) -> None:
    """Writes the SavedModel with its signatures and the threshold JSON under assets/.

    The JSON also records what rebuilds the Keras model (`architecture`, `image_size`, `model_config`),
    for warm start and Grad-CAM, what training cost and chose (`training`: parameters, wall time,
    images/s, best epoch), for the results table, and how the OOD guard was fitted (`ood`).
    """
    tf.io.gfile.makedirs(work_dir)  # gfile: the run folder may be in a bucket (Kubeflow)
    asset_path = os.path.join(work_dir, THRESHOLD_ASSET)
    with tf.io.gfile.GFile(asset_path, "w") as f:
        json.dump(
            {
                **dataclasses.asdict(threshold),
                "architecture": architecture,
                "image_size": image_size,
                "model_config": model_config,
                "training": training or {},
                "max_pixels": MAX_PIXELS,
                "ood": guard.summary(),
            },
            f,
            indent=2,
            sort_keys=True,
        )
    # The same layers and weights, without what compile() attached (optimizer slots, metric state): the
    # served model would otherwise carry the Adam moments, three times its weights.
    inference_model = keras.Model(model.inputs, model.outputs, name=model.name)
    # Models outside the registry (tests) name their Grad-CAM layer `feature_map`, as registered ones do.
    gradcam_layer = REGISTRY[architecture].gradcam_layer if architecture in REGISTRY else FEATURE_MAP
    module = PneumoniaModule(inference_model, image_size, threshold, asset_path, gradcam_layer, guard)
    tf.saved_model.save(
        module,
        export_dir,
        signatures={
            "serving_default": module.serve_examples,
            "predict_images": module.predict_images,
            "explain_images": module.explain_images,
            CLASSIFY_SIGNATURE: module.classify,
        },
    )
    _mark_classification(export_dir, CLASSIFY_SIGNATURE)


def _mark_classification(export_dir: str, signature: str) -> None:
    """TF2's saved_model.save gives every signature the predict method name; TF Serving's Classify refuses
    any signature whose method name is not the classify one, so it is set here (and the fingerprint,
    which hashes saved_model.pb, written again)."""
    path = os.path.join(export_dir, tf.saved_model.SAVED_MODEL_FILENAME_PB)
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        meta_graph.signature_def[signature].method_name = tf.saved_model.CLASSIFY_METHOD_NAME
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(saved_model.SerializeToString(deterministic=True))
    fingerprinting_utils.write_fingerprint(export_dir)


def read_guard(export_dir: str) -> ood.OodGuard:
    """The OOD guard inside an exported model, to export the same weights again (e.g. with another threshold)."""
    summary = read_metadata(export_dir).get("ood")
    if summary is None:
        raise ValueError(f"{export_dir} was exported without an out-of-distribution guard: train it again")
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    means, precision = (
        reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE") for name in ("ood_means", "ood_precision")
    )
    return ood.OodGuard(
        means,
        precision,
        summary["threshold"],
        summary["validation_percentile"],
        summary["train_images"],
        summary["validation_images"],
    )


def read_metadata(export_dir: str) -> Dict[str, Any]:
    """The threshold JSON of an exported model (threshold, architecture, image_size, model_config)."""
    path = threshold_file(export_dir)
    if not tf.io.gfile.exists(path):  # gfile: models may live in a bucket (Kubeflow)
        raise ValueError(f"{export_dir} is not a model exported by this trainer: {path} is missing")
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
