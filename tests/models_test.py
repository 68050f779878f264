"""Architecture registry and model builders."""
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
