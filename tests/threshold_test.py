"""Operating threshold chosen on validation."""
import numpy as np
import pytest

from trainer import threshold


def test_youden_picks_the_best_separating_threshold():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = np.array([0.1, 0.2, 0.6, 0.5, 0.7, 0.9])
    chosen = threshold.choose(labels, probabilities, "youden")
    # At 0.7: sensitivity 2/3, specificity 1; at 0.5: 1 and 2/3. Same J: the more sensitive wins.
    assert chosen.value == pytest.approx(0.5)
    assert (chosen.sensitivity, chosen.specificity) == (1.0, pytest.approx(2 / 3))
    assert threshold.choose(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.6, 0.8])).value == pytest.approx(0.6)


def test_sensitivity_policy_reaches_the_target():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    probabilities = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, 500), 0, 1)
    chosen = threshold.choose(labels, probabilities, "sensitivity:0.95")
    predicted = probabilities >= chosen.value
    assert predicted[labels == 1].mean() >= 0.95
    assert chosen.sensitivity == pytest.approx(predicted[labels == 1].mean())
    assert chosen.specificity == pytest.approx((~predicted[labels == 0]).mean())


def test_single_class_validation_falls_back_and_says_so():
    chosen = threshold.choose(np.ones(4), np.array([0.2, 0.4, 0.6, 0.8]))
    assert chosen.value == 0.5 and "fallback" in chosen.policy


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown threshold policy"):
        threshold.choose(np.array([0, 1]), np.array([0.2, 0.8]), "f1")


@pytest.mark.parametrize("policy", ["sensitivity:high", "sensitivity:0", "sensitivity:1.5"])
def test_sensitivity_target_must_be_a_fraction(policy):
    with pytest.raises(ValueError, match="target sensitivity must be a number in"):
        threshold.target_sensitivity(policy)


def test_policies_parse_to_their_target():
    assert threshold.target_sensitivity("sensitivity:0.95") == 0.95 and threshold.target_sensitivity("youden") is None
