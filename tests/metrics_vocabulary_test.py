"""The metric and slice vocabulary has one owner, components/metrics_vocabulary.py: every other module names a
metric key, a key suffix or a slice through it, so renaming one cannot leave a reader looking up a key TFMA no
longer writes.

The scan reads the source's string literals (f-string parts included; docstrings are prose, left out). Keys
that are also ordinary words are not searched for (`recall`, `calibration`, also a split's name, `auc`, also
Keras's metric): TFMA's compound keys, the suffixes and the slice spellings are unambiguous.
"""

import ast
import pathlib
import re
from typing import Iterator, Tuple

import pytest

from components import metrics_vocabulary as vocabulary

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCANNED = ("components", "pipeline", "pneumonia", "kubeflow")
OWNER = ROOT / "components" / "metrics_vocabulary.py"
COMPOUND_KEYS = {key for _, key, _ in vocabulary.METRICS if "_" in key}  # binary_accuracy, f1_score, ...
SUFFIXES = (vocabulary.AT_THRESHOLD_SUFFIX, vocabulary.LOWER, vocabulary.UPPER, vocabulary.LOWER_BOUND_SUFFIX)
SLICE_FEATURES = sorted({feature for features in vocabulary.SLICE_FEATURES for feature in features})
SLICE_SPELLING = re.compile(rf"(^|, )({'|'.join(SLICE_FEATURES)})=")  # `split=`, `dataset=kermany, split=eval`


def _docstrings(tree: ast.AST) -> set:
    holders = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, holders)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }


def literals(path: pathlib.Path) -> Iterator[Tuple[int, str]]:
    """(line, text) of every string literal of a module but its docstrings."""
    tree = ast.parse(path.read_text(), str(path))
    prose = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
            yield node.lineno, node.value


def spells_vocabulary(text: str) -> bool:
    return (
        text in COMPOUND_KEYS
        or text == vocabulary.OVERALL
        or any(suffix in text for suffix in SUFFIXES)
        or bool(SLICE_SPELLING.search(text))
    )


def test_only_the_vocabulary_spells_metric_keys_suffixes_and_slices():
    offending = [
        f"{path.relative_to(ROOT)}:{line}: {text!r}"
        for package in SCANNED
        for path in sorted((ROOT / package).rglob("*.py"))
        if path != OWNER
        for line, text in literals(path)
        if spells_vocabulary(text)
    ]
    assert not offending, "use components/metrics_vocabulary.py instead of:\n" + "\n".join(offending)


def test_the_scan_sees_keys_suffixes_and_slices_in_code_but_not_in_prose(tmp_path):
    module = tmp_path / "reader.py"
    module.write_text(
        '"""Reads `recall@threshold` of the slice split=eval."""\n'
        "def cells(row, key, split):\n"
        '    """The binary_accuracy of dataset=kermany, split=test."""\n'
        '    return (row["recall@threshold"], row.get("binary_accuracy"), row[key + ":upper"],\n'
        '            row[f"split={split}"], row["overall"], row["recall"], "auc")\n'
    )
    found = {text for _, text in literals(module) if spells_vocabulary(text)}
    assert found == {"recall@threshold", "binary_accuracy", ":upper", "split=", "overall"}


@pytest.mark.parametrize(
    "name, parts",
    [
        ("dataset=kermany, split=eval", {"dataset": "kermany", "split": "eval"}),
        ("source=rsna, split=external", {"source": "rsna", "split": "external"}),
        (vocabulary.OVERALL, {}),
    ],
)
def test_slice_names_and_parts_round_trip(name, parts):
    assert vocabulary.slice_parts(name) == parts
    assert vocabulary.slice_name(parts.items()) == name


def test_whole_split_slices_and_split_order():
    assert vocabulary.is_split_slice("dataset=kermany, split=test")
    assert not vocabulary.is_split_slice("label=0, split=test") and not vocabulary.is_split_slice("dataset=kermany")
    assert not vocabulary.is_split_slice(vocabulary.OVERALL)
    assert vocabulary.ordered_splits(["test", "external", "eval", "train", "calibration"], "eval") == [
        "train",
        "eval",
        "test",
        "calibration",
        "external",
    ]


def test_suffixed_keys_name_their_metric():
    key = vocabulary.at_threshold(vocabulary.RECALL)
    assert key == "recall@threshold" and vocabulary.base_metric(key) == vocabulary.RECALL
    assert vocabulary.interval_keys(key) == ("recall@threshold:lower", "recall@threshold:upper")
    assert vocabulary.lower_bound_key(vocabulary.SPECIFICITY) == "specificity_lower_bound"


def test_undefined_metrics_of_one_class_slices():
    both = {vocabulary.RECALL: 0.8, vocabulary.SPECIFICITY: 0.9}
    normal_only = {vocabulary.RECALL: float("nan"), vocabulary.SPECIFICITY: 0.9}
    pneumonia_only = {vocabulary.RECALL: 0.8}
    assert vocabulary.undefined_metrics(both) == ()
    assert set(vocabulary.undefined_metrics(normal_only)) == {
        *vocabulary.TWO_CLASS_METRICS,
        *vocabulary.NEEDS_POSITIVES,
    }
    assert set(vocabulary.undefined_metrics(pneumonia_only)) == set(vocabulary.TWO_CLASS_METRICS)


def test_every_titled_key_is_a_metric_the_evaluator_computes():
    computed = {key for _, key, _ in vocabulary.METRICS}
    computed |= {vocabulary.at_threshold(key) for key in vocabulary.THRESHOLD_DEPENDENT}
    assert set(vocabulary.METRIC_TITLES) <= computed and set(vocabulary.SHORT_TITLES) <= computed
    assert set(vocabulary.THRESHOLD_DEPENDENT) <= {key for _, key, _ in vocabulary.METRICS}
