"""The k-shot calibration table: patient-grouped seeded draws, calibrated on k images, evaluated on the rest."""

import os

import numpy as np
import pytest

from pneumonia.analysis import compare as compare_lib
from pneumonia.analysis import kshot
from pneumonia.runs import scoring
from tests.compare_test import runs  # noqa: F401 (fixture)


def shifted_split(count=400, seed=0):
    """A split whose scores sit higher than validation's: the validation threshold 0.5 loses specificity."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(count) % 3 != 0).astype(int)  # two thirds PNEUMONIA
    probabilities = 1 / (1 + np.exp(-(2.0 * labels + 0.5 + rng.normal(0, 1, count))))
    within = [int((labels[:i] == label).sum()) for i, label in enumerate(labels)]  # index within the class
    paths = [
        f"PNEUMONIA/person{n // 2}_bacteria_{i}.jpeg" if label else f"NORMAL/IM-{n // 2:04d}-{i}.jpeg"
        for i, (label, n) in enumerate(zip(labels, within))
    ]  # two images per patient
    return labels, probabilities, paths


def test_draws_are_whole_patients_and_calibration_recovers_specificity():
    labels, probabilities, paths = shifted_split()
    patients, sources = kshot.patients_and_sources("test", labels, paths)
    assert patients[1] == patients[2] == "person0" and len(set(patients)) == 200 and set(sources) == {"test"}
    found = kshot.draws(labels, probabilities, patients, sources, 50, "youden", 0.5, count=10)
    assert np.all(found["drawn"] % 2 == 0) and np.all(found["drawn"] >= 50)  # whole patients, about k
    assert found["specificity"].mean() > found["specificity@val"].mean() + 0.2
    assert found["accuracy"].mean() > found["accuracy@val"].mean()
    again = kshot.draws(labels, probabilities, patients, sources, 50, "youden", 0.5, count=10)
    np.testing.assert_array_equal(found["threshold"], again["threshold"])  # seeded


def test_external_draws_are_stratified_by_source():
    labels = np.array([0] * 40 + [1] * 20 + [0] * 10)
    paths = (
        [f"rsna_Normal-{i}.jpeg" for i in range(40)]
        + [f"ieee8023_covid-{i}.jpeg" for i in range(20)]
        + [f"ieee8023_normal-{i}.jpeg" for i in range(10)]
    )
    _, sources = kshot.patients_and_sources("external", labels, paths)
    assert sources[0] == "rsna" and sources[-1] == "ieee8023"
    probabilities = np.linspace(0.1, 0.9, labels.size)
    found = kshot.draws(labels, probabilities, paths, sources, 14, "youden", 0.5, count=3)
    assert np.all(found["drawn"] == 14)  # 8 rsna, 4 + 2 ieee8023: shares kept exactly


def test_compare_kshot_prints_a_row_per_model_split_and_k(runs, monkeypatch):  # noqa: F811
    for split in ("test", "external"):
        os.makedirs(os.path.join(runs, "examples", f"Split-{split}"), exist_ok=True)
    monkeypatch.setattr(scoring, "score_splits", lambda uri, splits, model: {s: shifted_split() for s in splits})
    text = compare_lib.compare(os.path.join(runs, "metadata.sqlite"), markdown=True, kshot=True)
    kshot_table, prior_table = (part.splitlines()[2:] for part in text.split("\n\n"))
    assert len(kshot_table) == 2 * 2 * 3  # cnn and densenet121, test and external, k = 20, 50, 100
    cells = [cell.strip() for cell in kshot_table[0].strip("|").split("|")]
    assert cells[:3] == ["cnn", "test", "20"] and cells[4] == "0.250"  # the model's validation threshold
    assert all(" ± " in cell for cell in cells[5:])
    assert len(prior_table) == 2 * 2  # per model and split
    cells = [cell.strip() for cell in prior_table[0].strip("|").split("|")]
    assert cells[:3] == ["cnn", "test", f"{shifted_split()[0].mean():.3f}"] and cells[4] == "0.250"


def test_the_prior_adjustment_finds_a_shifted_prevalence_and_lowers_the_threshold():
    """Scores of a model calibrated for equal classes (the posterior of two unit Gaussians at +-1), on a site
    where 80% of the images are pneumonia: Saerens' EM recovers the 80% and the threshold moves down."""
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=4000) < 0.8).astype(int)
    probabilities = 1 / (1 + np.exp(-2.0 * rng.normal(np.where(labels == 1, 1.0, -1.0), 1.0)))
    share, estimate, before, after = (float(cell) for cell in kshot.prior_adjustment(labels, probabilities, 0.5)[:4])
    assert share == pytest.approx(0.8, abs=0.02) and estimate == pytest.approx(share, abs=0.03)
    assert before == 0.5 and after < 0.3
