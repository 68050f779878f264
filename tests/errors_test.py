"""`pneumonia errors`: mistakes at the model's threshold, grouped by file-name family."""

import numpy as np
import pytest

from pneumonia import cli
from pneumonia.analysis import errors
from pneumonia.runs import scoring
from tests.compare_test import runs  # noqa: F401 (fixture: two evaluated architectures in ML Metadata)


@pytest.mark.parametrize(
    "path, family",
    [
        ("test/NORMAL/NORMAL2-IM-0201-0001.jpeg", "NORMAL#-IM"),
        ("test/NORMAL/IM-0022-0001.jpeg", "IM"),
        ("train/PNEUMONIA/person154_bacteria_728.jpeg", "person#_bacteria"),
        ("NORMAL/rsna_Normal-10151.jpeg", "rsna_Normal"),
        ("PNEUMONIA/ieee8023_5acb8ac5.jpeg", "ieee#"),
        ("NORMAL/ieee8023_1-s2.0-S1059131120301151-gr2-e.jpeg", "ieee#"),
        ("x/scan.png", "scan"),
    ],
)
def test_name_family_keeps_the_fixed_part_of_a_name(path, family):
    assert errors.name_family(path) == family


LABELS = np.array([0, 0, 0, 1, 1])
PROBABILITIES = np.array([0.9, 0.2, 0.6, 0.1, 0.8])
PATHS = ["N/IM-1-1.jpeg", "N/IM-2-1.jpeg", "N/NORMAL2-IM-3-1.jpeg", "P/person1_virus_1.jpeg", "P/person2_virus_2.jpeg"]


def test_family_rows_count_errors_at_the_threshold():
    rows = errors.family_rows(LABELS, PROBABILITIES, PATHS, 0.5)
    assert rows[1:] == [
        ["IM", "NORMAL", "2", "1", "0.500"],
        ["NORMAL#-IM", "NORMAL", "1", "1", "1.000"],
        ["person#_virus", "PNEUMONIA", "2", "1", "0.500"],
    ]


def test_worst_rows_list_the_most_confident_mistakes_first():
    rows = errors.worst_rows(LABELS, PROBABILITIES, PATHS, 0.5, count=2)
    assert [row[0] for row in rows[1:]] == ["N/IM-1-1.jpeg", "P/person1_virus_1.jpeg"]  # both 0.4 from the threshold


def test_cli_scores_each_architecture_or_the_one_asked(runs, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(
        scoring,
        "score_splits",
        lambda examples, splits, model: {split: (LABELS, PROBABILITIES, PATHS) for split in splits},
    )
    cli.main(["errors", "--root", runs])
    out = capsys.readouterr().out
    assert "cnn on test, at its threshold 0.250" in out and "densenet121 on test" in out
    cli.main(["errors", "--root", runs, "--architecture", "cnn", "--markdown"])
    out = capsys.readouterr().out
    assert "**cnn on test" in out and "densenet121" not in out and "| NORMAL#-IM | NORMAL | 1 | 1 | 1.000 |" in out
    with pytest.raises(SystemExit, match="no evaluated swin model"):
        cli.main(["errors", "--root", runs, "--architecture", "swin"])
