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


def test_sensitivity_policy_takes_the_highest_threshold_that_reaches_the_target():
    """Any threshold up to 0.4 keeps 4 of 5 pneumonias (0.8); the policy must take 0.4, the most specific one."""
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1])
    probabilities = np.array([0.1, 0.3, 0.35, 0.5, 0.2, 0.4, 0.6, 0.8, 0.9])
    chosen = threshold.choose(labels, probabilities, "sensitivity:0.8")
    assert chosen.value == pytest.approx(0.4)
    assert (chosen.sensitivity, chosen.specificity) == (0.8, 0.75)
    assert (probabilities[labels == 1] >= 0.6).mean() < 0.8  # the next higher candidate misses the target


def test_single_class_validation_falls_back_and_says_so():
    chosen = threshold.choose(np.ones(4), np.array([0.2, 0.4, 0.6, 0.8]))
    assert chosen.value == 0.5 and "fallback" in chosen.policy


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown threshold policy"):
        threshold.choose(np.array([0, 1]), np.array([0.2, 0.8]), "f1")


@pytest.mark.parametrize("policy", ["sensitivity:high", "sensitivity:0", "sensitivity:1.5"])
def test_sensitivity_target_must_be_a_fraction(policy):
    with pytest.raises(ValueError, match="target sensitivity must be a number in"):
        threshold.parse(policy)


@pytest.mark.parametrize("policy", ["fixed:0", "fixed:1", "fixed:x"])
def test_fixed_threshold_must_be_inside_the_unit_interval(policy):
    with pytest.raises(ValueError, match="a fixed threshold must be a number in"):
        threshold.parse(policy)


@pytest.mark.parametrize("policy", ["youden:0.5", "fixed", "median-midpoint:1"])
def test_malformed_policies_are_refused(policy):
    with pytest.raises(ValueError, match="unknown threshold policy"):
        threshold.parse(policy)


def test_policies_parse_to_their_number():
    assert threshold.parse("sensitivity:0.95") == ("sensitivity", 0.95)
    assert threshold.parse("youden") == ("youden", None) and threshold.parse("fixed:0.5") == ("fixed", 0.5)


def test_fixed_policy_keeps_its_value_and_reports_validation_figures():
    chosen = threshold.choose(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]), "fixed:0.5")
    assert (chosen.value, chosen.sensitivity, chosen.specificity) == (0.5, 0.5, 0.5)


def test_median_midpoint_is_halfway_between_the_class_medians_in_logits():
    # Perfectly separated: Youden's threshold is the lowest PNEUMONIA score, the gap's edge; the midpoint of
    # the medians (logits -2 and +2) is 0.5, the middle of the gap.
    labels = np.array([0, 0, 0, 1, 1, 1])
    probabilities = 1 / (1 + np.exp(-np.array([-3.0, -2.0, -1.4, 1.4, 2.0, 3.0])))
    assert threshold.choose(labels, probabilities, "youden").value == pytest.approx(probabilities[3])
    chosen = threshold.choose(labels, probabilities, "median-midpoint")
    assert chosen.value == pytest.approx(0.5) and (chosen.sensitivity, chosen.specificity) == (1.0, 1.0)
