"""ThresholdCalibrator's work: score the calibration split with the trained model, choose the threshold
there by the run's policy, and write the same weights again with the new threshold in both signatures.

The model is rebuilt from its threshold JSON (architecture, image size, settings) and its SavedModel's own
variables, then exported through trainer/signatures.py like the Trainer does, so `threshold.json`, the
`threshold` output and `decision_score` all carry the new value. The record of the change goes to
`calibration.json` beside the model and, when the threshold moved, to the SavedModel's `assets.extra/`
(which TF Serving ignores), so a deployed version carries it.
"""

import json
import os
import tempfile
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf
from tfx.utils import io_utils

from components.report import scoring
from components.threshold_calibrator import calibration
from serving.repository import EXTRA_ASSETS_DIR, serving_model_dir
from trainer import models, signatures, task
from trainer.threshold import Threshold

RECORD = "calibration.json"
SAVED_MODEL_RECORD = os.path.join(EXTRA_ASSETS_DIR, RECORD)
PROBABILITY_TOLERANCE = 1e-5  # the rebuilt model must score exactly as the one it replaces


def rebuild(saved_model_dir: str) -> Tuple[keras.Model, dict]:
    """The Keras model inside an exported SavedModel, rebuilt from the registry with its variables, and its
    threshold JSON. Works on any exported version (a pushed one carries no separate Keras weights)."""
    info = signatures.read_metadata(saved_model_dir)
    model = models.build(info["architecture"], int(info["image_size"]), **info.get("model_config", {}))
    status = tf.train.Checkpoint(model=model).read(os.path.join(saved_model_dir, "variables", "variables"))
    status.assert_existing_objects_matched()
    return model, info


def probabilities(saved_model_dir: str, serialized: List[bytes]) -> np.ndarray:
    """PNEUMONIA probabilities of serialized tf.Examples through the SavedModel's `serving_default`."""
    serve = tf.saved_model.load(saved_model_dir).signatures["serving_default"]
    return scoring.predict(serve, serialized)


def predict_outputs(saved_model_dir: str, images: List[bytes], batch_size: int = 32) -> Dict[str, np.ndarray]:
    """Every output of the SavedModel's `predict_images` (what a server runs) on encoded images, by name."""
    serve = tf.saved_model.load(saved_model_dir).signatures["predict_images"]
    batches = [serve(images=tf.constant(images[i : i + batch_size])) for i in range(0, len(images), batch_size)]
    return {key: np.concatenate([batch[key].numpy() for batch in batches]) for key in (batches[0] if batches else [])}


def predict_images(saved_model_dir: str, images: List[bytes], batch_size: int = 32) -> np.ndarray:
    """PNEUMONIA probabilities of encoded images through the SavedModel's `predict_images`."""
    return predict_outputs(saved_model_dir, images, batch_size).get("probability", np.zeros(0, np.float32))


def reexport(
    saved_model_dir: str,
    export_dir: str,
    chosen: Threshold,
    work_dir: str,
    record: Dict,
    check_images: Optional[List[bytes]] = None,
) -> None:
    """Writes the same weights with threshold `chosen` to export_dir, plus `record` in assets.extra/.

    With `check_images`, the new export must give the same probabilities as the old one on them."""
    model, info = rebuild(saved_model_dir)
    signatures.export(
        model,
        export_dir,
        int(info["image_size"]),
        chosen,
        work_dir,
        info["architecture"],
        info.get("model_config", {}),
        info.get("training"),
        guard=signatures.read_guard(saved_model_dir),
    )
    write_json(os.path.join(export_dir, SAVED_MODEL_RECORD), record)
    if check_images:
        before, after = predict_images(saved_model_dir, check_images), predict_images(export_dir, check_images)
        if not np.allclose(before, after, atol=PROBABILITY_TOLERANCE):
            raise RuntimeError(
                f"the re-exported model scores differently from {saved_model_dir} (largest "
                f"difference {np.abs(before - after).max():.2e}): its weights were not restored"
            )


def write_json(path: str, value: Dict) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(value, indent=2, sort_keys=True))


def run(
    examples_uri: str,
    split_names: List[str],
    model_uri: str,
    output_uri: str,
    split: str,
    bootstrap_samples: int,
    seed: int,
) -> Dict:
    """Calibrates the model at model_uri into output_uri (or copies it unchanged when the examples hold no
    `split`), and returns the record also written to output_uri/calibration.json."""
    source = serving_model_dir(model_uri)
    info = signatures.read_metadata(source)
    if split not in split_names:
        io_utils.copy_dir(model_uri, output_uri)
        record = {
            "calibrated": False,
            "old_threshold": float(info["value"]),
            "new_threshold": float(info["value"]),
            "note": f"no {split} split in the examples ({', '.join(split_names)}): the trained model passes "
            f"through unchanged, at its validation threshold",
        }
    else:
        sample = scoring.read_split(examples_uri, split, cap=10**9)
        labels = np.array(sample.labels)
        scores = probabilities(source, sample.serialized)
        chosen, record = calibration.calibrate(
            labels,
            scores,
            calibration.policy_of(info["policy"]),
            float(info["value"]),
            f"the {split} split",
            bootstrap_samples,
            seed,
        )
        with tempfile.TemporaryDirectory() as work_dir:
            reexport(source, serving_model_dir(output_uri), chosen, work_dir, record, check_images=sample.images[:64])
        keras_weights = task.keras_weights_path(source)  # for Grad-CAM in the report
        if tf.io.gfile.exists(keras_weights):
            io_utils.copy_file(keras_weights, task.keras_weights_path(serving_model_dir(output_uri)))
    write_json(os.path.join(output_uri, RECORD), record)
    return record
