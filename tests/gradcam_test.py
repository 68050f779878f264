"""Grad-CAM and Grad-CAM++: input-sized, finite, informative maps for every architecture and layer kind."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from components.report import gradcam
from trainer import models
from trainer.preprocessing import decode_image

SIZE = 64


def real_pixels(shared_data, count=4) -> np.ndarray:
    files = sorted(glob.glob(f"{shared_data}/chest_xray/test/*/*.jpeg"))[::150][:count]
    return np.stack([decode_image(open(f, "rb").read(), SIZE).numpy() for f in files])


def conv_model() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 1))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(8, 3, strides=2, activation="relu", name="features")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))


def token_model() -> keras.Model:
    """A transformer-like model: patches become tokens, the last token sequence is reshaped to a grid."""
    inputs = keras.Input((SIZE, SIZE, 1))
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(16, 8, strides=8)(x)  # 8 x 8 patches
    tokens = layers.Reshape((64, 16))(x)
    attended = layers.MultiHeadAttention(num_heads=2, key_dim=8)(tokens, tokens)
    tokens = layers.LayerNormalization()(layers.Add()([tokens, attended]))
    grid = layers.Reshape((8, 8, 16), name="token_grid")(tokens)
    x = layers.GlobalAveragePooling2D()(grid)
    return keras.Model(inputs, layers.Dense(1, activation="sigmoid")(x))


def registry_models():
    """Each registered architecture (tiny, untrained), seeded on its own so the list can grow without reshuffling
    the others' weights: an untrained model can have only negative evidence, which ReLU maps to all zeros."""
    built = []
    for name, entry in models.REGISTRY.items():
        keras.utils.set_random_seed(0)
        built.append((models.build(name, SIZE, **entry.tiny), entry.gradcam_layer))
    return built


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: [(conv_model(), "features")], id="conv"),
        pytest.param(lambda: [(token_model(), "token_grid")], id="token-grid"),
        pytest.param(registry_models, id="registry"),
    ],
)
def test_maps_have_input_size_and_carry_information(make, shared_data):
    keras.utils.set_random_seed(0)
    pixels = real_pixels(shared_data)
    for model, layer_name in make():
        cam, cam_plus_plus, probability = gradcam.heatmaps(model, layer_name, pixels)
        np.testing.assert_allclose(probability, model.predict(pixels, verbose=0).reshape(-1), atol=1e-5)
        for maps in (cam, cam_plus_plus):
            assert maps.shape == (len(pixels), SIZE, SIZE), model.name
            assert np.all(np.isfinite(maps)) and maps.min() >= 0 and maps.max() <= 1 + 1e-6
            assert all(m.std() > 1e-4 for m in maps), f"{model.name}: a constant map"


def quadrant_model() -> keras.Model:
    """Two channels see opposite quadrants; the head reads only the top-left one, as evidence for PNEUMONIA."""
    top_left = np.zeros((1, SIZE, SIZE, 1), np.float32)
    top_left[:, : SIZE // 2, : SIZE // 2] = 1.0
    inputs = keras.Input((SIZE, SIZE, 1))
    features = layers.Lambda(
        lambda x: tf.concat([x * top_left, x * top_left[:, ::-1, ::-1]], axis=-1), name="features"
    )(inputs)
    head = layers.Dense(1, activation="sigmoid", kernel_initializer=keras.initializers.Constant([[1.0], [0.0]]))
    return keras.Model(inputs, head(layers.GlobalAveragePooling2D()(features)))


QUADRANT_PIXELS = np.random.default_rng(0).uniform(0.5, 1, (2, SIZE, SIZE, 1)).astype(np.float32)


def test_maps_show_the_feature_channel_the_decision_uses():
    """Both maps must peak in the quadrant the head reads."""
    for maps in gradcam.heatmaps(quadrant_model(), "features", QUADRANT_PIXELS)[:2]:
        assert maps[:, : SIZE // 2, : SIZE // 2].mean() > 0.5
        assert maps[:, SIZE // 2 + 1 :, :].max() < 1e-3 and maps[:, :, SIZE // 2 + 1 :].max() < 1e-3


def test_bad_layer_names_say_what_is_wrong():
    model = token_model()
    with pytest.raises(ValueError, match="'nope' is not a layer"):
        gradcam.heatmaps(model, "nope", np.zeros((1, SIZE, SIZE, 1)))
    sequence_layer = next(layer.name for layer in model.layers if isinstance(layer, layers.LayerNormalization))
    with pytest.raises(ValueError, match=r"needs a spatial feature map \[N, H, W, C\]"):
        gradcam.heatmaps(model, sequence_layer, np.zeros((1, SIZE, SIZE, 1)))


def test_maps_explain_the_class_predicted_at_the_models_threshold():
    """Probabilities near 0.6-0.7: PNEUMONIA at 0.5, NORMAL at a threshold of 0.9. The top-left quadrant is evidence
    for PNEUMONIA only, so explaining NORMAL leaves nothing for ReLU to show."""
    model = quadrant_model()
    cam, cam_plus_plus, probability = gradcam.heatmaps(model, "features", QUADRANT_PIXELS, threshold=0.9)
    assert np.all((probability > 0.5) & (probability < 0.9))
    assert cam.max() < 1e-3 and cam_plus_plus.max() < 1e-3
    assert gradcam.heatmaps(model, "features", QUADRANT_PIXELS, threshold=0.5)[0].max() > 0.5
