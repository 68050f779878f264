"""The OOD guard: Mahalanobis distances as defined, thresholds at the validation percentile, clear errors."""

import keras
import numpy as np
import pytest

from trainer import explain, models, ood


def gaussian_classes(rng, count: int, dimensions: int = 6):
    """Two classes with different means and one correlated covariance."""
    mixing = rng.normal(size=(dimensions, dimensions))
    labels = np.arange(count) % 2
    means = np.stack([np.zeros(dimensions), np.full(dimensions, 4.0)])
    return means[labels] + rng.normal(size=(count, dimensions)) @ mixing, labels, mixing


def test_distance_is_the_mahalanobis_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(0)
    features, labels, mixing = gaussian_classes(rng, 4000)
    means, precision = ood.fit_gaussians(features, labels)
    np.testing.assert_allclose(means, [features[labels == c].mean(0) for c in (0, 1)], rtol=1e-5)
    # With plenty of data the shrunk covariance is close to the true one, mixing^T mixing.
    np.testing.assert_allclose(np.linalg.inv(precision), mixing.T @ mixing, rtol=0.1, atol=0.2)
    points = rng.normal(size=(5, 6)) * 3
    expected = [min(np.sqrt((p - m) @ precision @ (p - m)) for m in means) for p in points]
    np.testing.assert_allclose(ood.distances(points, means, precision).numpy(), expected, rtol=1e-4)


def test_threshold_flags_the_chosen_share_of_validation_and_far_points():
    rng = np.random.default_rng(1)
    train, labels, mixing = gaussian_classes(rng, 3000)
    validation, _, _ = gaussian_classes(rng, 2000)
    guard = ood.fit(train, labels, validation, percentile=99.0)
    flagged = ood.distances(validation, guard.means, guard.precision).numpy() > guard.threshold
    assert flagged.mean() == pytest.approx(0.01, abs=0.003)
    far = np.full((3, 6), 40.0) @ mixing
    assert np.all(ood.distances(far, guard.means, guard.precision).numpy() > guard.threshold)
    assert guard.summary()["dimensions"] == 6 and guard.summary()["train_images"] == 3000


def test_singular_features_still_give_finite_distances():
    """ReLU features have dead units: a constant column must not make the covariance unusable."""
    rng = np.random.default_rng(2)
    features, labels, _ = gaussian_classes(rng, 200)
    features[:, 2] = 0.0
    means, precision = ood.fit_gaussians(features, labels)
    assert np.all(np.isfinite(ood.distances(features, means, precision).numpy()))


def test_bad_inputs_say_what_is_wrong():
    features = np.zeros((4, 3))
    with pytest.raises(ValueError, match="two training images of each class"):
        ood.fit_gaussians(features, np.zeros(4, int))
    with pytest.raises(ValueError, match="needs validation images"):
        ood.fit(features, np.array([0, 0, 1, 1]), np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"percentile must be in \(0, 100\]"):
        ood.fit(features, np.array([0, 0, 1, 1]), features, percentile=0)
    with pytest.raises(ValueError, match="got no images"):
        ood.features(None, [])


@pytest.mark.parametrize("name", sorted(models.REGISTRY))
def test_every_architecture_gives_the_guard_its_pooled_feature_map(name):
    keras.utils.set_random_seed(0)
    model = models.build(name, 64, **models.REGISTRY[name].tiny)
    layer = models.REGISTRY[name].gradcam_layer
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 1)).astype(np.float32)
    probabilities, features, labels = ood.features(explain.feature_model(model, layer), [(pixels, [0, 1, 1])])
    np.testing.assert_allclose(probabilities, model.predict(pixels, verbose=0).reshape(-1), atol=1e-5)
    _, *feature_maps = explain.feature_model(model, layer)(pixels)  # an ensemble: one map per member
    pooled = np.concatenate([np.asarray(feature_map).mean(axis=(1, 2)) for feature_map in feature_maps], axis=-1)
    np.testing.assert_allclose(features, pooled, rtol=1e-5, atol=1e-6)
    assert list(labels) == [0, 1, 1]
