"""Architecture registry and model builders."""
import keras
import numpy as np
import pytest

from trainer import models


def test_cnn_is_the_seed_architecture():
    model = models.build("cnn", 128)
    convs = [layer for layer in model.layers if layer.__class__.__name__ == "Conv2D"]
    assert [layer.filters for layer in convs] == [32, 64, 128]
    assert all(layer.activation.__name__ == "relu" for layer in convs)
    assert sum(layer.__class__.__name__ == "MaxPooling2D" for layer in model.layers) == 3
    assert any(layer.__class__.__name__ == "Dropout" for layer in model.layers)
    assert model.layers[-1].activation.__name__ == "sigmoid"


@pytest.mark.parametrize("name", sorted(models.REGISTRY))
def test_tiny_configuration_predicts_probabilities(name):
    model = models.build(name, 64, **models.REGISTRY[name].tiny)
    pixels = np.random.default_rng(0).uniform(0, 255, size=(3, 64, 64, 1)).astype("float32")
    probabilities = model.predict(pixels, verbose=0)
    assert probabilities.shape == (3, 1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ValueError, match="unknown architecture 'resnet'.*cnn"):
        models.build("resnet", 64)


@pytest.mark.parametrize("name", sorted(models.REGISTRY))
def test_every_architecture_names_its_last_spatial_feature_map(name):
    model = models.build(name, 64, **models.REGISTRY[name].tiny)
    feature_map = model.get_layer(models.REGISTRY[name].gradcam_layer).output
    assert len(feature_map.shape) == 4 and feature_map.shape[1] == feature_map.shape[2] > 1


def test_densenet_loads_a_local_weights_file_into_its_frozen_backbone(tmp_path):
    reference = keras.applications.DenseNet121(include_top=False, weights=None, input_shape=(32, 32, 3))
    weights_file = str(tmp_path / "densenet121.weights.h5")
    reference.save_weights(weights_file)
    model = models.build("densenet121", 32, weights=weights_file)
    backbone = model.get_layer(models.BACKBONE)
    assert len(backbone.layers) == len(reference.layers) and not backbone.trainable
    for loaded, saved in zip(backbone.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(loaded, saved)
    rgb = model.get_layer("to_imagenet")(np.full((1, 2, 2, 1), 255.0, "float32")).numpy()
    np.testing.assert_allclose(rgb[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]),
                               rtol=1e-5)


@pytest.mark.parametrize("weights, message", [
    ("/nowhere/densenet.h5", "weights file not found"),
    ("densenet.bin", "expected 'imagenet', 'none' or a .h5/.keras"),
])
def test_densenet_names_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        models.build("densenet121", 32, weights=weights)


def test_densenet_imagenet_weights_need_densenet121_blocks():
    with pytest.raises(ValueError, match="ImageNet weights exist only for blocks"):
        models.build("densenet121", 32, weights="imagenet", blocks=(1, 1, 1, 1))


def test_densenet_from_scratch_trains_its_whole_backbone():
    model = models.build("densenet121", 32, **models.REGISTRY["densenet121"].tiny)
    backbone = model.get_layer(models.BACKBONE)
    assert backbone.trainable and len(backbone.trainable_weights) > len(model.trainable_weights) // 2


def test_unfreeze_top_opens_the_last_dense_block_only(tmp_path):
    tiny = models.REGISTRY["densenet121"].tiny
    weights_file = str(tmp_path / "backbone.weights.h5")
    models.build("densenet121", 32, **tiny).get_layer(models.BACKBONE).save_weights(weights_file)
    model = models.build("densenet121", 32, weights=weights_file, **tiny)
    backbone = model.get_layer(models.BACKBONE)
    assert not backbone.trainable_weights
    order = [weight.path for weight in model.weights]
    models.unfreeze_top(model, models.REGISTRY["densenet121"].fine_tune_from)
    assert [weight.path for weight in model.weights] == order  # the best stage's weights can be set back
    trainable = {layer.name for layer in backbone.layers if layer.trainable and layer.weights}
    assert trainable and all(name.startswith("conv5_") or name == "bn" for name in trainable)
    with pytest.raises(ValueError, match="has no layer 'conv9'"):
        models.unfreeze_top(model, "conv9")


def test_cnn_transformer_is_the_seed_hybrid():
    model = models.build("cnn_transformer", 64)
    kinds = [layer.__class__.__name__ for layer in model.layers]
    assert [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv2D)] == [32, 64, 128]
    assert kinds.count("MaxPooling2D") == 3
    tokens = model.get_layer("tokens").output
    assert tokens.shape[1:] == (6 * 6, 128)  # 64 px: 3x3 valid convolutions and pooling give 62, 31, 29, 14, 12, 6
    assert kinds.index("PositionEmbedding") < kinds.index("MultiHeadAttention") < kinds.index("GlobalAveragePooling1D")
    assert kinds.count("LayerNormalization") == 2 and model.layers[-1].activation.__name__ == "sigmoid"


def test_swin_t_configuration_has_swin_t_parameters():
    model = models.build("swin", 224, **models.SWIN_T)
    # Swin-T has 28,288,354 parameters; without its 1000-class head (769,000), with a 1-channel patch
    # embedding (3,072 fewer) and a single sigmoid unit (769 more):
    assert model.count_params() == 28_288_354 - 769_000 - 3_072 + 769
    blocks = [layer for layer in model.layers if isinstance(layer, models.SwinBlock)]
    assert [block.window for block in blocks] == [7] * 12
    assert [block.shift for block in blocks] == [0, 3] * 5 + [0, 0]  # the 7 x 7 last stage is one window
    assert model.get_layer(models.FEATURE_MAP).output.shape[1:] == (7, 7, 768)


def test_shifted_window_mask_separates_regions_the_roll_joined():
    mask = models._shifted_window_mask(size=4, window=2, shift=1)
    assert mask.shape == (4, 4, 4)
    np.testing.assert_array_equal(mask[0], 0)  # the top-left window holds one region only
    # The bottom-right window gathers four regions: each token attends to itself only.
    np.testing.assert_array_equal(mask[3] == 0, np.eye(4, dtype=bool))


def test_swin_refuses_sizes_it_cannot_tile():
    with pytest.raises(ValueError, match="multiple of patch_size x 2"):
        models.build("swin", 100)
    with pytest.raises(ValueError, match="differ in length"):
        models.build("swin", 64, depths=(2, 2), num_heads=(2,))


def test_swin_learns_a_darker_centre():
    """Swin once could not: its per-patch norm cancelled the brightness scaling of uncentred pixels."""
    keras.utils.set_random_seed(0)
    pixels = np.random.default_rng(0).uniform(0, 255, size=(160, 32, 32, 1)).astype("float32")
    labels = (np.arange(160) % 2).astype("float32")
    pixels[labels == 1, 8:24, 8:24] *= 0.5
    model = models.build("swin", 32, **models.REGISTRY["swin"].tiny)
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(pixels[:128], labels[:128], epochs=3, batch_size=32, verbose=0)
    probability = model.predict(pixels[128:], verbose=0).reshape(-1)
    assert probability[labels[128:] == 1].min() > probability[labels[128:] == 0].max()


def test_settings_of_another_architecture_are_named():
    with pytest.raises(ValueError, match="swin: unknown model_config setting.* filters; known: embed_dim"):
        models.build("swin", 64, filters=(4, 8, 16))


def _member_file(tmp_path, architecture: str, image_size: int, seed: int) -> dict:
    keras.utils.set_random_seed(seed)
    config = models.REGISTRY[architecture].tiny
    member = models.build(architecture, image_size, **config)
    path = str(tmp_path / f"{architecture}{seed}.weights.h5")
    member.save_weights(path)
    return {"architecture": architecture, "image_size": image_size, "model_config": config, "weights": path}


def test_ensemble_averages_its_members_logits(tmp_path):
    """Exactly: the shared Grad-CAM map (nearest upsampling, average pooling back) loses nothing."""
    import tensorflow as tf
    members = [_member_file(tmp_path, "cnn", 64, 1), _member_file(tmp_path, "swin", 64, 2),
               _member_file(tmp_path, "cnn_transformer", 32, 3)]
    model = models.build("ensemble", 64, members=members)
    assert not model.trainable_weights
    pixels = np.random.default_rng(0).uniform(0, 255, size=(3, 64, 64, 1)).astype("float32")
    logits = []
    for spec in members:
        member = models.build(spec["architecture"], spec["image_size"], **spec["model_config"])
        member.load_weights(spec["weights"])
        size = spec["image_size"]
        resized = pixels if size == 64 else tf.image.resize(pixels, [size, size], antialias=True).numpy()
        probability = np.clip(member.predict(resized, verbose=0), 1e-7, 1 - 1e-7)
        logits.append(np.log(probability / (1 - probability)))
    expected = 1 / (1 + np.exp(-np.mean(logits, axis=0)))
    np.testing.assert_allclose(model.predict(pixels, verbose=0), expected, atol=1e-5)
    # one map for Grad-CAM, on the least common multiple of the members' grids
    grids = [models.build(spec["architecture"], spec["image_size"], **spec["model_config"])
             .get_layer(models.FEATURE_MAP).output.shape[1] for spec in members]
    grid = int(np.lcm.reduce(grids))
    assert len(set(grids)) > 1 and model.get_layer(models.FEATURE_MAP).output.shape[1:3] == (grid, grid)
    # and it exports and serves like any model, members of another size included
    from trainer import ood, signatures
    from trainer.threshold import Threshold
    export_dir = str(tmp_path / "export")
    signatures.export(model, export_dir, 64, Threshold(0.5, "youden", 1.0, 1.0, 3), str(tmp_path / "work"), "ensemble",
                      {"members": members}, guard=ood.noise_guard(model, 64))
    encoded = [tf.io.encode_png(image.astype("uint8")).numpy() for image in pixels.round()]
    served = tf.saved_model.load(export_dir).signatures["predict_images"](images=tf.constant(encoded))
    np.testing.assert_allclose(served["probability"].numpy(), model.predict(pixels.round(), verbose=0)[:, 0], atol=1e-5)


def test_ensemble_refuses_members_whose_grids_need_a_huge_shared_map():
    """cnn at 224 px (52 x 52) with a small swin at 160 px (20 x 20) share a 260 x 260 grid, as the full-data
    ensemble of the lungs recipes did (5 x 5 there): it ran out of memory instead of saying so."""
    members = [{"architecture": "cnn", "image_size": 224, "model_config": {"filters": [4, 8, 256], "dense_units": 4}},
               {"architecture": "swin", "image_size": 160, "model_config": models.REGISTRY["swin"].tiny}]
    with pytest.raises(ValueError, match=r"grids \[52, 20\] share a 260 x 260"):
        models.build("ensemble", 224, members=members)


@pytest.mark.parametrize("members, message", [
    ([{"architecture": "cnn"}], "at least 2 members"),
    ([{"architecture": "cnn", "epochs": 3}, {"architecture": "cnn"}], "member 0: expected architecture"),
    ([{"architecture": "cnn"}, {"architecture": "ensemble"}], "member 1: an ensemble cannot be a member"),
    ([{"architecture": "cnn", "weights": "/nowhere.weights.h5"}, {"architecture": "cnn"}], "weights file not found"),
])
def test_ensemble_names_bad_members(members, message):
    with pytest.raises(ValueError, match=message):
        models.build("ensemble", 32, members=members)
