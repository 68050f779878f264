"""Architecture registry: each model is registered by name with a tiny configuration for tests.

A builder takes the square input size plus its own keyword settings and returns an uncompiled Keras
model mapping float32 [N, size, size, 1] pixels in [0, 255] to a pneumonia probability [N, 1].
Normalisation happens inside the model, so serving feeds raw decoded pixels.
"""
import dataclasses
from typing import Any, Callable, Dict

import keras
from keras import layers


@dataclasses.dataclass(frozen=True)
class Architecture:
    build: Callable[..., keras.Model]
    tiny: Dict[str, Any]  # settings that build a model in seconds, for tests


REGISTRY: Dict[str, Architecture] = {}


def register(name: str, tiny: Dict[str, Any]):
    def decorator(build: Callable[..., keras.Model]):
        REGISTRY[name] = Architecture(build, tiny)
        return build
    return decorator


def build(name: str, image_size: int, **settings: Any) -> keras.Model:
    if name not in REGISTRY:
        raise ValueError(f"unknown architecture {name!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name].build(image_size, **settings)


def _pixels(image_size: int) -> keras.KerasTensor:
    return keras.Input(shape=(image_size, image_size, 1), name="pixels")


@register("cnn", tiny={"filters": (4, 8, 16), "dense_units": 16})
def basic_cnn(image_size: int, filters=(32, 64, 128), dense_units: int = 128, dropout: float = 0.5) -> keras.Model:
    """The seed's basic CNN: 3 x (Conv2D + ReLU, max-pool), Dense + Dropout, sigmoid."""
    inputs = _pixels(image_size)
    x = layers.Rescaling(1.0 / 255)(inputs)
    for index, count in enumerate(filters):
        x = layers.Conv2D(count, 3, activation="relu", name=f"conv{index + 1}")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(dense_units, activation="relu")(x)
    x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(1, activation="sigmoid", name="probability")(x)
    return keras.Model(inputs, outputs, name="cnn")
