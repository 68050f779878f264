"""The border-attention metric: the share of Grad-CAM mass on the outer band of the image."""

import numpy as np
import pytest

from components.report import attention


def test_an_even_map_scores_the_band_area():
    assert attention.BORDER_AREA == pytest.approx(0.4375)
    assert attention.border_share(np.ones((1, 64, 64)))[0] == pytest.approx(0.4375)


def test_maps_inside_and_outside_the_central_window():
    central, border, zero = np.zeros((3, 32, 32))
    central[4:28, 4:28] = 1.0  # exactly the central window (band of 4 pixels at 32)
    border[0, :] = 1.0  # the top edge: collimation, a marker
    shares = attention.border_share(np.stack([central, border, zero]))
    assert shares[0] == 0.0 and shares[1] == 1.0 and np.isnan(shares[2])


def test_negative_values_carry_no_mass():
    maps = np.zeros((1, 16, 16))
    maps[0, 8, 8], maps[0, 0, 0] = 1.0, -5.0
    assert attention.border_share(maps)[0] == 0.0


def test_outcomes_at_the_threshold_with_their_counts():
    shares = np.array([0.1, 0.2, 0.9, 0.5, np.nan])
    labels = np.array([1, 1, 0, 0, 1])
    probabilities = np.array([0.9, 0.2, 0.8, 0.1, 0.95])
    table = attention.by_outcome(shares, labels, probabilities, threshold=0.5)
    assert (table["TP"].images, table["TP"].mean) == (2, pytest.approx(0.1))  # the NaN map is counted, not averaged
    assert (table["FN"].images, table["FN"].mean) == (1, pytest.approx(0.2))
    assert (table["FP"].images, table["FP"].mean) == (1, pytest.approx(0.9))
    assert (table["TN"].images, table["TN"].mean) == (1, pytest.approx(0.5))
    assert table["all"].images == 5 and table["all"].mean == pytest.approx(np.mean([0.1, 0.2, 0.9, 0.5]))


def test_written_and_read_back(tmp_path):
    table = {"test": attention.by_outcome(np.array([0.3, np.nan]), np.array([0, 1]), np.array([0.2, 0.1]), 0.5)}
    path = str(tmp_path / attention.ATTENTION_FILE)
    attention.write(path, table)
    back = attention.read(path)
    assert back["test"]["TN"] == table["test"]["TN"] and np.isnan(back["test"]["FN"].mean)
