"""`explain_images` and the OOD guard in the exported model: the report's Grad-CAM, the guard's distances."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

from components.report import gradcam
from tests.serving_fixtures import xray_guard
from trainer import explain, models, ood, signatures
from trainer.preprocessing import decode_image
from trainer.threshold import Threshold

SIZE = 64
# The served map is the report's map averaged over 4 x 4 blocks; both run the same ops, one in the
# SavedModel's graph and one eagerly, so they differ by float32 rounding only.
TOLERANCE = 1e-4


def real_images(shared_data, pattern: str, count: int):
    return [open(f, "rb").read() for f in sorted(glob.glob(f"{shared_data}/{pattern}"))[:count]]


@pytest.mark.parametrize("architecture", sorted(models.REGISTRY))
def test_explain_images_matches_the_report_gradcam(architecture, shared_data, tmp_path):
    keras.utils.set_random_seed(0)
    model = models.build(architecture, SIZE, **models.REGISTRY[architecture].tiny)
    images = real_images(shared_data, "chest_xray/test/*/*.jpeg", 10**6)[::90]
    pixels = np.stack([decode_image(image, SIZE).numpy() for image in images])
    # The median probability as threshold: both classes are predicted, so both signs of the score are explained.
    threshold = float(np.median(model.predict(pixels, verbose=0)))
    export_dir = str(tmp_path / "model")
    signatures.export(
        model,
        export_dir,
        SIZE,
        Threshold(threshold, "youden", 1.0, 1.0, 1),
        str(tmp_path / "work"),
        architecture,
        {},
        guard=ood.noise_guard(model, SIZE),
    )
    loaded = tf.saved_model.load(export_dir)
    explained = {k: v.numpy() for k, v in loaded.signatures["explain_images"](images=tf.constant(images)).items()}
    predicted = loaded.signatures["predict_images"](images=tf.constant(images))
    for key, value in predicted.items():  # everything predict_images says, explain_images says the same
        np.testing.assert_array_equal(explained[key], value.numpy(), err_msg=key)

    cam, cam_plus_plus, probability = gradcam.heatmaps(
        model, models.REGISTRY[architecture].gradcam_layer, pixels, threshold
    )
    np.testing.assert_allclose(explained["probability"], probability, atol=1e-5)
    side = explain.heatmap_size(SIZE)
    for key, report_map in (("gradcam", cam), ("gradcam_plus_plus", cam_plus_plus)):
        served = explained[key]
        assert served.shape == (len(images), side, side) and served.dtype == np.float32
        assert served.min() >= 0 and served.max() <= 1
        blocks = report_map.reshape(len(images), side, SIZE // side, side, SIZE // side).mean(axis=(2, 4))
        np.testing.assert_allclose(served, blocks, atol=TOLERANCE, err_msg=key)
        assert served.max() > 0.5, f"{architecture} {key}: every map is blank, the comparison shows nothing"


def test_ood_outputs_are_the_guard_distances_in_every_signature(shared_data, tmp_path):
    """How well the guard separates X-rays from other images is measured on a trained model
    (bench/ood_bench.py); here: the served outputs are the guard's, and its threshold passes X-rays."""
    pytest.importorskip("skimage")
    from skimage import data

    keras.utils.set_random_seed(0)
    model = models.build("cnn", SIZE, **models.REGISTRY["cnn"].tiny)
    guard = xray_guard(model, shared_data, SIZE)
    export_dir = str(tmp_path / "model")
    signatures.export(
        model, export_dir, SIZE, Threshold(0.5, "youden", 1.0, 1.0, 1), str(tmp_path / "work"), "cnn", {}, guard=guard
    )
    assert signatures.read_metadata(export_dir)["ood"]["threshold"] == pytest.approx(guard.threshold)
    xrays = real_images(shared_data, "chest_xray/test/*/*.jpeg", 10**6)[::25]
    photographs = [tf.io.encode_png(data.astronaut()).numpy()]
    loaded = tf.saved_model.load(export_dir)
    for signature, key in (("predict_images", "images"), ("serving_default", "examples")):
        inputs = xrays + photographs
        if key == "examples":
            inputs = [
                tf.train.Example(
                    features=tf.train.Features(
                        feature={"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
                    )
                ).SerializeToString()
                for image in inputs
            ]
        outputs = {k: v.numpy() for k, v in loaded.signatures[signature](**{key: tf.constant(inputs)}).items()}
        pixels = np.stack([decode_image(image, SIZE).numpy() for image in xrays + photographs])
        _, features, _ = ood.features(
            explain.feature_model(model, models.FEATURE_MAP), [(pixels, np.zeros(len(pixels)))]
        )
        np.testing.assert_allclose(
            outputs["ood_score"], ood.distances(features, guard.means, guard.precision), rtol=1e-4
        )
        np.testing.assert_array_equal(outputs["in_distribution"], outputs["ood_score"] <= guard.threshold)
        assert outputs["in_distribution"][: len(xrays)].mean() >= 0.8, signature
        assert not outputs["in_distribution"][-1], f"{signature}: the astronaut passed as an X-ray"


def test_the_guard_can_be_read_back_for_a_re_export(tmp_path):
    """The threshold calibrator exports the same weights again: the guard must come along unchanged."""
    keras.utils.set_random_seed(0)
    model = models.build("cnn", SIZE, **models.REGISTRY["cnn"].tiny)
    guard = ood.noise_guard(model, SIZE)
    export_dir = str(tmp_path / "model")
    signatures.export(
        model, export_dir, SIZE, Threshold(0.5, "youden", 1.0, 1.0, 1), str(tmp_path / "work"), "cnn", {}, guard=guard
    )
    read = signatures.read_guard(export_dir)
    np.testing.assert_array_equal(read.means, guard.means)
    np.testing.assert_array_equal(read.precision, guard.precision)
    assert (read.threshold, read.percentile, read.train_images) == (guard.threshold, guard.percentile, 16)
