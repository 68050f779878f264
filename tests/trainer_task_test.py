"""run_fn per architecture on real images: trains, exports, serves; threshold from validation; warm start."""

import glob
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from serving.repository import THRESHOLD_ASSET
from tests.signatures_test import serve_both
from tests.trainer_inputs_test import real_images, write_split
from trainer import models, objective, signatures, task, threshold
from trainer.config import TrainerConfig
from trainer.preprocessing import decode_batch

IMAGE_SIZE = 32
# Each architecture's run also covers one training option: the options need no run of their own. The ensemble:
# fresh tiny members, nothing to fit, its own threshold.
VARIANTS = {
    "cnn": {"ood_percentile": 90.0},
    "cnn_transformer": {"loss": "focal"},
    "swin": {"horizontal_flip": True, "cache": False},
    "ensemble": {},
}


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory):
    """A handful of real train images, and validation images from other patients (later in file order)."""
    root = tmp_path_factory.mktemp("records")
    validation = real_images(shared_data, "train", per_class=6, skip=8)
    return {
        "train": write_split(str(root / "train"), real_images(shared_data, "train", per_class=8)),
        "eval": write_split(str(root / "eval"), validation),
        "validation_images": validation,
    }


def config_for(architecture: str, **changes) -> dict:
    config = {
        "architecture": architecture,
        "model_config": models.REGISTRY[architecture].tiny,
        "image_size": IMAGE_SIZE,
        "epochs": 1,
        "batch_size": 8,
        "learning_rate": 1e-3,
        "early_stopping_patience": 2,
        "threshold_policy": "youden",
        "loss": "bce",
        "augment": True,
        "horizontal_flip": False,
        "cache": True,
        "weights": "none",
        "seed": 7,
    }
    return {**config, **changes}


def checked(architecture: str, **changes) -> TrainerConfig:
    """`config_for`'s settings as run_fn reads them."""
    return TrainerConfig.from_dict(config_for(architecture, **changes))


def run(data, folder, config, base_model=None) -> str:
    """Runs the Trainer's run_fn as TFX would; returns the serving model folder."""
    serving_dir = os.path.join(folder, "model", "Format-Serving")
    task.run_fn(
        FnArgs(
            train_files=[data["train"]],
            eval_files=[data["eval"]],
            serving_model_dir=serving_dir,
            model_run_dir=os.path.join(folder, "model_run"),
            custom_config=config,
            base_model=base_model,
        )
    )
    return serving_dir


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """run_fn's export per architecture (tiny configuration), trained once per module."""
    exports = {}

    def export_of(architecture: str) -> str:
        if architecture not in exports:
            exports[architecture] = run(
                data, str(tmp_path_factory.mktemp(architecture)), config_for(architecture, **VARIANTS[architecture])
            )
        return exports[architecture]

    return export_of


def assert_export_contract(serving_dir: str, architecture: str, validation_images) -> None:
    """Both signatures agree and serve probabilities, the stored threshold is the one the validation split
    gives, and the Keras weights beside the export rebuild the same model (warm start, Grad-CAM)."""
    images = [image for image, _ in validation_images]
    outputs = serve_both(serving_dir, images)
    probability = outputs["probability"]

    metadata = signatures.read_metadata(serving_dir)
    assert (metadata["architecture"], metadata["image_size"]) == (architecture, IMAGE_SIZE)
    on_validation = threshold.choose(
        np.array([label for _, label in validation_images]), probability, metadata["policy"]
    )
    assert metadata["value"] == pytest.approx(on_validation.value, abs=1e-6)
    np.testing.assert_allclose(outputs["threshold"], metadata["value"], atol=1e-7)

    rebuilt = models.build(architecture, IMAGE_SIZE, **metadata["model_config"])
    rebuilt.load_weights(task.keras_weights_path(serving_dir))
    pixels = decode_batch(tf.constant(images), IMAGE_SIZE)
    np.testing.assert_allclose(rebuilt.predict(pixels, verbose=0).reshape(-1), probability, atol=1e-5)
    assert all(
        len(layer.output.shape) == 4
        for layer in models.feature_map_layers(rebuilt, models.REGISTRY[architecture].gradcam_layer)
    )


@pytest.mark.parametrize("architecture", sorted(VARIANTS))
def test_architecture_trains_exports_and_serves(architecture, trained, data):
    serving_dir = trained(architecture)
    assert_export_contract(serving_dir, architecture, data["validation_images"])
    metadata = signatures.read_metadata(serving_dir)
    assert metadata["ood"]["validation_percentile"] == checked(architecture, **VARIANTS[architecture]).ood_percentile
    model_run_dir = os.path.join(os.path.dirname(os.path.dirname(serving_dir)), "model_run")
    trained_epochs = metadata["training"]["epochs_run"]
    assert trained_epochs == (0 if architecture == "ensemble" else 1)
    if trained_epochs:
        assert glob.glob(os.path.join(model_run_dir, "**", "events.out.tfevents.*"), recursive=True)  # TensorBoard


def test_densenet_trains_head_then_fine_tunes_top_block_from_a_weights_file(data, tmp_path):
    """Stage one trains only the head; stage two opens conv5 from the given weights: conv4 stays as loaded."""
    tiny = models.REGISTRY["densenet121"].tiny
    backbone = models.build("densenet121", IMAGE_SIZE, **tiny).get_layer(models.BACKBONE)
    weights_file = str(tmp_path / "densenet121.weights.h5")
    backbone.save_weights(weights_file)
    config = config_for("densenet121", epochs=2, weights=weights_file, threshold_policy="sensitivity:0.9")
    serving_dir = run(data, str(tmp_path), config)
    assert_export_contract(serving_dir, "densenet121", data["validation_images"])

    trained_backbone = models.build("densenet121", IMAGE_SIZE, **tiny)
    trained_backbone.load_weights(task.keras_weights_path(serving_dir))
    trained_backbone = trained_backbone.get_layer(models.BACKBONE)

    def kernel(model, name):
        return model.get_layer(name).get_weights()[0]

    frozen, fine_tuned = "conv4_block1_2_conv", "conv5_block1_2_conv"
    np.testing.assert_array_equal(kernel(trained_backbone, frozen), kernel(backbone, frozen))
    assert not np.array_equal(kernel(trained_backbone, fine_tuned), kernel(backbone, fine_tuned))
    assert signatures.read_metadata(serving_dir)["policy"] == "sensitivity:0.9"


def test_stages_fine_tune_only_pretrained_backbones(tmp_path):
    tiny = models.REGISTRY["densenet121"].tiny
    from_scratch = models.build("densenet121", IMAGE_SIZE, **tiny)
    weights_file = str(tmp_path / "backbone.weights.h5")
    from_scratch.get_layer(models.BACKBONE).save_weights(weights_file)
    pretrained = models.build("densenet121", IMAGE_SIZE, weights=weights_file, **tiny)
    assert task._stages(pretrained, "densenet121", 5, 1e-3) == [
        (3, 1e-3, None),
        (2, pytest.approx(1e-4), "conv5_block1_0_bn"),
    ]
    assert task._stages(pretrained, "densenet121", 1, 1e-3) == [(1, 1e-3, None)]
    assert task._stages(from_scratch, "densenet121", 5, 1e-3) == [(5, 1e-3, None)]
    assert task._stages(models.build("cnn", IMAGE_SIZE, **models.REGISTRY["cnn"].tiny), "cnn", 5, 1e-3) == [
        (5, 1e-3, None)
    ]


def test_warm_start_starts_from_the_base_model_weights(trained):
    base = trained("cnn")
    config = checked("cnn")
    warm = task.build_model(config, base_model=base)
    fresh = task.build_model(config)
    saved = models.build("cnn", IMAGE_SIZE, **models.REGISTRY["cnn"].tiny)
    saved.load_weights(task.keras_weights_path(base))
    for warm_weight, saved_weight in zip(warm.get_weights(), saved.get_weights()):
        np.testing.assert_array_equal(warm_weight, saved_weight)
    assert not all(np.array_equal(w, f) for w, f in zip(warm.get_weights(), fresh.get_weights()))


def test_warm_start_from_another_architecture_is_refused_before_training(trained, data, tmp_path):
    with pytest.raises(ValueError, match="warm start refused: .* has architecture 'cnn', this run has 'swin'"):
        run(data, str(tmp_path), config_for("swin"), base_model=trained("cnn"))
    assert not os.path.exists(tmp_path / "model")


def test_warm_start_with_another_model_config_is_refused(trained):
    config = checked("cnn", model_config={"filters": [4, 8, 32], "dense_units": 16})
    with pytest.raises(ValueError, match="warm start refused: .* has model_config"):
        task.build_model(config, base_model=trained("cnn"))


def test_warm_start_needs_the_keras_weights(trained, tmp_path):
    base = trained("cnn")
    copy = tmp_path / "model" / "Format-Serving" / "assets"
    copy.mkdir(parents=True)
    (copy / THRESHOLD_ASSET).write_text(json.dumps(signatures.read_metadata(base)))
    with pytest.raises(ValueError, match="no Keras weights at"):
        task.build_model(checked("cnn"), base_model=str(copy.parent))


def test_pretrained_weights_only_for_a_pretrained_backbone():
    with pytest.raises(ValueError, match="'cnn' has no pretrained backbone"):
        checked("cnn", weights="imagenet")
    with pytest.raises(ValueError, match="must not set 'weights'"):
        checked("densenet121", model_config={"weights": "imagenet"})


def test_bad_threshold_policy_fails_before_training(data, tmp_path):
    with pytest.raises(ValueError, match="unknown threshold policy 'f1'"):
        run(data, str(tmp_path), config_for("cnn", threshold_policy="f1"))


def test_class_weights_balance_the_classes():
    loss, weights = objective.loss_and_class_weights("bce", 1341, 3875)
    assert isinstance(loss, keras.losses.BinaryCrossentropy)
    assert weights[0] * 1341 == pytest.approx(weights[1] * 3875)
    assert weights[0] * 1341 + weights[1] * 3875 == pytest.approx(1341 + 3875)


def test_focal_loss_balances_by_alpha_without_class_weights():
    loss, weights = objective.loss_and_class_weights("focal", 1000, 3000)
    assert isinstance(loss, keras.losses.BinaryFocalCrossentropy) and weights is None
    assert loss.get_config()["alpha"] == pytest.approx(0.25) and loss.get_config()["apply_class_balancing"]
    with pytest.raises(ValueError, match="unknown loss 'hinge'"):
        objective.loss_and_class_weights("hinge", 1, 1)


def test_training_by_validation_loss_records_its_cost_and_choice(data, tmp_path):
    config = config_for("cnn", epochs=2, early_stopping_metric="loss", label_smoothing=0.1)
    training = signatures.read_metadata(run(data, str(tmp_path), config))["training"]
    assert training["early_stopping_metric"] == "loss" and training["epochs_run"] == 2
    assert 1 <= training["best_epoch"] <= 2 and 0 < training["best_validation_value"] < 5
    assert training["parameters"] == models.build("cnn", IMAGE_SIZE, **config["model_config"]).count_params()
    assert training["train_examples"] == sum(task.inputs.label_counts([data["train"]]))
    assert training["train_seconds"] > 0 and training["train_images_per_second"] > 0


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"early_stopping_metric": "f1"}, "unknown early_stopping_metric"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in"),
    ],
)
def test_bad_training_settings_are_refused(data, tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        run(data, str(tmp_path), config_for("cnn", **setting))


def test_ema_momentum_has_a_horizon_in_epochs():
    assert objective.ema_momentum(0.0, 100) is None
    assert objective.ema_momentum(2.0, 50) == pytest.approx(0.99)
    with pytest.raises(ValueError, match="ema_epochs must be >= 0"):
        objective.ema_momentum(-1.0, 10)


def test_weight_averaging_exports_the_averaged_weights_it_validated(data, tmp_path):
    """The best epoch's validation loss was measured on the averaged weights; the exported model must be
    exactly those weights, so recomputing the loss from the export gives the recorded value."""
    config = config_for(
        "cnn",
        epochs=2,
        early_stopping_metric="loss",
        ema_epochs=1.0,
        augment=True,
        crop_min_area=0.7,
        acquisition_augment=True,
    )
    serving_dir = run(data, str(tmp_path), config)
    training = signatures.read_metadata(serving_dir)["training"]
    steps_per_epoch = -(-training["train_examples"] // config["batch_size"])
    assert training["ema_momentum"] == pytest.approx(objective.ema_momentum(1.0, steps_per_epoch))
    images = tf.constant([image for image, _ in data["validation_images"]])
    labels = np.array([[label] for _, label in data["validation_images"]], np.float32)
    probability = serve_both(serving_dir, list(images.numpy()))["probability"].reshape(-1, 1)
    recomputed = keras.losses.BinaryCrossentropy()(labels, probability).numpy()
    assert recomputed == pytest.approx(training["best_validation_value"], rel=1e-4)
