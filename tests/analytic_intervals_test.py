"""The closed-form intervals (pipeline/interval_metrics.py): each against its exact definition, and each
covering the truth about 95% of the time on simulated samples."""

import math

import numpy as np
import pytest

from pipeline import interval_metrics

BINS = interval_metrics.HISTOGRAM_BINS


def histograms(positives: np.ndarray, negatives: np.ndarray):
    def binned(scores):
        return np.bincount(np.minimum((scores * BINS).astype(int), BINS - 1), minlength=BINS)

    return binned(positives), binned(negatives)


def pairwise_delong(positives: np.ndarray, negatives: np.ndarray):
    """DeLong's interval from every (PNEUMONIA, NORMAL) pair: the textbook definition."""
    wins = (positives[:, None] > negatives[None, :]) + 0.5 * (positives[:, None] == negatives[None, :])
    auc = wins.mean()
    se = math.sqrt(wins.mean(1).var(ddof=1) / positives.size + wins.mean(0).var(ddof=1) / negatives.size)
    return auc, auc - interval_metrics.Z_95 * se, auc + interval_metrics.Z_95 * se


def test_delong_on_the_histogram_equals_the_pairwise_definition():
    rng = np.random.default_rng(0)
    positives, negatives = rng.beta(3, 2, 300), rng.beta(2, 3, 200)
    assert interval_metrics.delong(*histograms(positives, negatives)) == pytest.approx(
        pairwise_delong(positives, negatives), abs=5e-4
    )


def test_delong_counts_ties_as_half_and_needs_both_classes():
    assert interval_metrics.delong([0, 2, 0], [0, 2, 0])[0] == 0.5
    assert all(math.isnan(value) for value in interval_metrics.delong([0, 3], [0, 0]))


def test_wilson_matches_its_formula_and_stays_inside_0_1():
    assert interval_metrics.wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    lower, upper = interval_metrics.wilson(0, 10)
    assert lower == 0.0 and upper == pytest.approx(0.2775, abs=1e-4)
    assert all(math.isnan(value) for value in interval_metrics.wilson(0, 0))


def test_mean_interval_is_the_normal_interval_of_the_mean():
    values = np.array([0.1, 0.4, 0.2, 0.3, 0.0])
    half = interval_metrics.Z_95 * values.std(ddof=1) / math.sqrt(values.size)
    assert interval_metrics.mean_interval(values.sum(), (values**2).sum(), values.size) == pytest.approx(
        (values.mean() - half, values.mean() + half)
    )


@pytest.mark.parametrize("measure", ["auc", "sensitivity", "brier"])
def test_each_interval_covers_the_truth_about_95_percent_of_the_time(measure):
    """400 simulated slices of 150 cases (scores from two normal distributions, AUC 0.86): the share of
    intervals holding the true value is 0.95 within what 400 draws allow (±0.03)."""
    rng = np.random.default_rng(1)
    separation, threshold = 1.5, 0.5
    truth = {"auc": 0.5 * math.erfc(-separation / 2), "sensitivity": None, "brier": None}
    big = rng.normal(separation, 1, 400_000), rng.normal(0, 1, 400_000)
    probability = lambda z: 1 / (1 + np.exp(-(z - separation / 2)))  # noqa: E731
    truth["sensitivity"] = float((probability(big[0]) > threshold).mean())
    truth["brier"] = float(np.concatenate([(probability(big[0]) - 1) ** 2, probability(big[1]) ** 2]).mean())
    covered = 0
    for _ in range(400):
        positives, negatives = probability(rng.normal(separation, 1, 75)), probability(rng.normal(0, 1, 75))
        sums = interval_metrics.IntervalSums().add(
            np.r_[np.ones(positives.size), np.zeros(negatives.size)], np.r_[positives, negatives]
        )
        lower, upper = sums.intervals()[{"auc": "auc", "sensitivity": "recall", "brier": "brier_score"}[measure]]
        covered += lower <= truth[measure] <= upper
    assert 0.92 <= covered / 400 <= 0.98, covered / 400
