"""Exported SavedModel: both signatures, same probabilities, threshold inside and in assets/."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from serving.repository import threshold_file
from trainer import models, ood, signatures
from trainer.preprocessing import decode_batch
from trainer.threshold import Threshold


def serialized_examples(images):
    return [
        tf.train.Example(
            features=tf.train.Features(
                feature={"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
            )
        ).SerializeToString()
        for image in images
    ]


def serve_both(export_dir: str, images) -> dict:
    """Runs both signatures on the same encoded images, checks they agree and give probabilities in
    [0, 1] with labels at the threshold, and returns the `predict_images` outputs as numpy arrays."""
    loaded = tf.saved_model.load(export_dir)
    by_image = loaded.signatures["predict_images"](images=tf.constant(images))
    by_example = loaded.signatures["serving_default"](examples=tf.constant(serialized_examples(images)))
    outputs = {key: value.numpy() for key, value in by_image.items()}
    for key, value in outputs.items():
        if value.dtype == object:
            assert list(value) == list(by_example[key].numpy()), key
        else:
            np.testing.assert_allclose(value, by_example[key].numpy(), atol=1e-6, err_msg=key)
    probability = outputs["probability"]
    assert probability.shape == (len(images),) and np.all((probability >= 0) & (probability <= 1))
    expected = np.where(probability >= outputs["threshold"], b"PNEUMONIA", b"NORMAL")
    assert list(outputs["label"]) == list(expected)
    return outputs


def test_signatures_agree_on_real_images(shared_data, tmp_path):
    files = sorted(glob.glob(f"{shared_data}/chest_xray/test/*/*.jpeg"))[::100]
    files += sorted(glob.glob(f"{shared_data}/originals/*/*.jpeg"))[:2]  # full resolution input
    images = [open(f, "rb").read() for f in files]
    model = models.build("cnn", 64, **models.REGISTRY["cnn"].tiny)
    chosen = Threshold(0.37, "youden", 0.9, 0.8, 100)
    export_dir = str(tmp_path / "model")
    signatures.export(
        model,
        export_dir,
        64,
        chosen,
        str(tmp_path / "work"),
        "cnn",
        models.REGISTRY["cnn"].tiny,
        guard=ood.noise_guard(model, 64),
    )

    outputs = serve_both(export_dir, images)
    np.testing.assert_allclose(outputs["threshold"], 0.37)
    asset = json.load(open(threshold_file(export_dir)))
    assert asset["value"] == 0.37 and asset["architecture"] == "cnn" and asset["image_size"] == 64
    assert signatures.read_metadata(export_dir) == asset
    rebuilt = models.build(asset["architecture"], asset["image_size"], **asset["model_config"])
    assert rebuilt.count_params() == model.count_params()


def test_a_folder_without_the_threshold_asset_is_not_our_model(tmp_path):
    with pytest.raises(ValueError, match="not a model exported by this trainer"):
        signatures.read_metadata(str(tmp_path))


def test_export_leaves_the_optimizer_state_out(tmp_path):
    """A trained model carries Adam's two moments per weight; the served model needs the weights only."""
    model = models.build("cnn", 64, **models.REGISTRY["cnn"].tiny)
    model.compile(keras.optimizers.Adam(), "binary_crossentropy", metrics=[keras.metrics.AUC()])
    model.fit(np.zeros((4, 64, 64, 1), "float32"), np.zeros(4, "float32"), verbose=0)
    export_dir = str(tmp_path / "model")
    signatures.export(
        model,
        export_dir,
        64,
        Threshold(0.5, "youden", 1.0, 1.0, 4),
        str(tmp_path / "work"),
        "cnn",
        {},
        guard=ood.noise_guard(model, 64),
    )
    variables = os.path.join(export_dir, "variables")
    size = sum(os.path.getsize(os.path.join(variables, name)) for name in os.listdir(variables))
    assert size < 1.5 * 4 * model.count_params()


def test_decision_score_puts_the_tuned_threshold_at_one_half(shared_data, tmp_path):
    """TFMA counts `decision_score` > 0.5 (+1e-7) as positive: exactly the examples labelled PNEUMONIA."""
    files = sorted(glob.glob(f"{shared_data}/chest_xray/test/*/*.jpeg"))[::40]
    images = tf.constant([open(f, "rb").read() for f in files])
    inputs = keras.Input((64, 64, 1))
    mean = keras.layers.GlobalAveragePooling2D()(keras.layers.Identity(name=models.FEATURE_MAP)(inputs))
    brightness = keras.Model(inputs, keras.layers.Rescaling(1.0 / 255, name="probability")(mean))  # mean brightness
    probabilities = brightness.predict(decode_batch(images, 64), verbose=0).reshape(-1)
    threshold = float(np.sort(probabilities)[len(probabilities) // 2])  # one example sits exactly on it
    export_dir = str(tmp_path / "model")
    signatures.export(
        brightness,
        export_dir,
        64,
        Threshold(threshold, "youden", 0.9, 0.8, 10),
        str(tmp_path / "work"),
        "brightness",
        {},
        guard=ood.noise_guard(brightness, 64),
    )
    out = tf.saved_model.load(export_dir).signatures["predict_images"](images=images)
    score, probability = out["decision_score"].numpy(), out["probability"].numpy()
    assert list((score > 0.5 + 1e-7)) == list(out["label"].numpy() == b"PNEUMONIA")
    assert 0 < (score > 0.5).sum() < len(files)
    order = np.argsort(probability)
    assert np.all(np.diff(score[order]) >= 0) and np.all((score >= 0) & (score <= 1))  # monotonic, in [0, 1]


def test_classify_signature_follows_tf_servings_classification_rules(tmp_path):
    """TF Serving's classifier.cc (PreProcessClassification, PostProcessClassificationResult): method name
    tensorflow/serving/classify, exactly one input `inputs` (serialized tf.Example), one or two outputs among
    `classes` (DT_STRING) and `scores` (DT_FLOAT), both [batch_size, num_classes]."""
    from tensorflow.core.protobuf import saved_model_pb2

    export_dir = str(tmp_path / "model")
    model = models.build("cnn", 64, **models.REGISTRY["cnn"].tiny)
    signatures.export(
        model,
        export_dir,
        64,
        Threshold(0.4, "youden", 0.9, 0.8, 10),
        str(tmp_path / "work"),
        "cnn",
        {},
        guard=ood.noise_guard(model, 64),
    )
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(open(os.path.join(export_dir, "saved_model.pb"), "rb").read())
    definition = saved_model.meta_graphs[0].signature_def[signatures.CLASSIFY_SIGNATURE]
    assert definition.method_name == "tensorflow/serving/classify"
    assert list(definition.inputs) == ["inputs"] and definition.inputs["inputs"].dtype == tf.string.as_datatype_enum
    assert set(definition.outputs) == {"classes", "scores"}
    assert definition.outputs["classes"].dtype == tf.string.as_datatype_enum
    assert definition.outputs["scores"].dtype == tf.float32.as_datatype_enum
    for output in definition.outputs.values():
        assert [dim.size for dim in output.tensor_shape.dim] == [-1, 2]
    tf.saved_model.experimental.read_fingerprint(export_dir)  # still consistent after the method name was set

    from tests.serving_fixtures import png

    images = [png(seed=1), png(seed=2), png(seed=3)]
    loaded = tf.saved_model.load(export_dir)
    classified = loaded.signatures[signatures.CLASSIFY_SIGNATURE](inputs=tf.constant(serialized_examples(images)))
    probability = serve_both(export_dir, images)["probability"]
    assert classified["classes"].numpy().tolist() == [[b"NORMAL", b"PNEUMONIA"]] * 3
    np.testing.assert_allclose(classified["scores"].numpy(), np.stack([1 - probability, probability], 1), atol=1e-6)
