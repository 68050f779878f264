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
    for layer in models.feature_map_layers(model, models.REGISTRY[name].gradcam_layer):
        assert len(layer.output.shape) == 4 and layer.output.shape[1] == layer.output.shape[2] > 1


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
    np.testing.assert_allclose(
        rgb[0, 0, 0], (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225]), rtol=1e-5
    )


@pytest.mark.parametrize(
    "weights, message",
    [
        ("/nowhere/densenet.h5", "weights file not found"),
        ("densenet.bin", "expected 'imagenet', 'none' or a .h5/.keras"),
    ],
)
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

    members = [
        _member_file(tmp_path, "cnn", 64, 1),
        _member_file(tmp_path, "swin", 64, 2),
        _member_file(tmp_path, "cnn_transformer", 32, 3),
    ]
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
    # each member's Grad-CAM map stays on its own grid
    grids = [
        models.build(spec["architecture"], spec["image_size"], **spec["model_config"])
        .get_layer(models.FEATURE_MAP)
        .output.shape[1]
        for spec in members
    ]
    assert len(set(grids)) > 1 and [layer.output.shape[1] for layer in models.feature_map_layers(model)] == grids
    # and it exports and serves like any model, members of another size included
    from trainer import ood, signatures
    from trainer.threshold import Threshold

    export_dir = str(tmp_path / "export")
    signatures.export(
        model,
        export_dir,
        64,
        Threshold(0.5, "youden", 1.0, 1.0, 3),
        str(tmp_path / "work"),
        "ensemble",
        {"members": members},
        guard=ood.noise_guard(model, 64),
    )
    encoded = [tf.io.encode_png(image.astype("uint8")).numpy() for image in pixels.round()]
    served = tf.saved_model.load(export_dir).signatures["predict_images"](images=tf.constant(encoded))
    np.testing.assert_allclose(served["probability"].numpy(), model.predict(pixels.round(), verbose=0)[:, 0], atol=1e-5)


def test_an_ensemble_of_one_member_twice_explains_like_the_member(tmp_path):
    """Grad-CAM sums the members' maps, each weighted by its share of the averaged logit: two copies of a member
    (each carrying half the logit's gradient) give the member's own map."""
    from components.report import gradcam

    spec = _member_file(tmp_path, "cnn", 64, 1)
    member = models.build("cnn", 64, **spec["model_config"])
    member.load_weights(spec["weights"])
    pixels = np.random.default_rng(1).uniform(0, 255, size=(4, 64, 64, 1)).astype("float32")
    threshold = float(np.median(member.predict(pixels, verbose=0)))  # both classes predicted
    alone = gradcam.heatmaps(member, models.FEATURE_MAP, pixels, threshold)
    twice = gradcam.heatmaps(models.build("ensemble", 64, members=[spec, spec]), models.FEATURE_MAP, pixels, threshold)
    assert alone[0].max() > 0.5
    np.testing.assert_allclose(twice[0], alone[0], atol=1e-4)
    np.testing.assert_allclose(twice[2], alone[2], atol=1e-5)


def test_members_with_coprime_grids_explain_at_full_size_without_a_shared_grid(tmp_path):
    """cnn at 224 px (a 52 x 52 map) with swin at 160 px (5 x 5 here) needed a 260 x 260 shared grid, which ran
    the full-data ensemble out of memory. A member whose logit barely moves (its head scaled by 1e-12) adds almost
    nothing: the ensemble's Grad-CAM is the other member's, at that member's decision boundary in the ensemble.
    Scaling each member's map to peak 1 before summing would count both members alike and fail here."""
    from components.report import gradcam

    cnn = {"architecture": "cnn", "image_size": 224, "model_config": {"filters": [4, 8, 16], "dense_units": 4}}
    swin = {
        "architecture": "swin",
        "image_size": 160,
        "model_config": {**models.REGISTRY["swin"].tiny, "patch_size": 16},
    }
    for spec, seed, bias in ((cnn, 1, None), (swin, 2, 0.7)):
        keras.utils.set_random_seed(seed)
        member = models.build(spec["architecture"], spec["image_size"], **spec["model_config"])
        if bias is not None:
            head = member.get_layer("probability")
            head.set_weights([1e-12 * head.get_weights()[0], np.full(1, bias, "float32")])
        spec["weights"] = str(tmp_path / f"{spec['architecture']}.weights.h5")
        member.save_weights(spec["weights"])
    model = models.build("ensemble", 224, members=[cnn, swin])
    assert [layer.output.shape[1] for layer in models.feature_map_layers(model)] == [52, 5]
    member = models.build("cnn", 224, **cnn["model_config"])
    member.load_weights(cnn["weights"])
    pixels = np.random.default_rng(2).uniform(0, 255, size=(4, 224, 224, 1)).astype("float32")
    logits = np.log(member.predict(pixels, verbose=0)) - np.log1p(-member.predict(pixels, verbose=0))
    threshold = 1 / (1 + np.exp(-np.median((logits + 0.7) / 2)))  # the ensemble predicts both classes
    ensemble_cam, _, _ = gradcam.heatmaps(model, models.FEATURE_MAP, pixels, threshold)
    member_threshold = 1 / (1 + np.exp(-(2 * np.log(threshold / (1 - threshold)) - 0.7)))
    member_cam, _, _ = gradcam.heatmaps(member, models.FEATURE_MAP, pixels, member_threshold)
    assert ensemble_cam.shape == (4, 224, 224) and member_cam.max() > 0.5
    np.testing.assert_allclose(ensemble_cam, member_cam, atol=1e-3)


@pytest.mark.parametrize(
    "members, message",
    [
        ([{"architecture": "cnn"}], "at least 2 members"),
        ([{"architecture": "cnn", "epochs": 3}, {"architecture": "cnn"}], "member 0: expected architecture"),
        ([{"architecture": "cnn"}, {"architecture": "ensemble"}], "member 1: an ensemble cannot be a member"),
        (
            [{"architecture": "cnn", "weights": "/nowhere.weights.h5"}, {"architecture": "cnn"}],
            "weights file not found",
        ),
    ],
)
def test_ensemble_names_bad_members(members, message):
    with pytest.raises(ValueError, match=message):
        models.build("ensemble", 32, members=members)
