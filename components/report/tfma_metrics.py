"""Reads TFMA's metrics back, with their 95% intervals: shared by the report component and `pneumonia compare`.

Here, below both, so the component needs nothing from `pneumonia/` or `pipeline/`.
"""
from typing import Dict, Iterable, Optional

import tensorflow_model_analysis as tfma

from trainer.signatures import DECISION_OUTPUT

AT_THRESHOLD_SUFFIX = "@threshold"
LOWER, UPPER = ":lower", ":upper"  # a metric's 95% interval in a slice_metrics row: `<key>:lower`, `<key>:upper`
POSITIVES, NEGATIVES = "positives", "negatives"  # the slice's PNEUMONIA and NORMAL counts
# TFMA's bootstrap (20 Poisson replicates) says little about a proportion over fewer cases than this: such a
# slice shows its case count instead of an interval.
MIN_CASES_FOR_INTERVAL = 20
# Each reported metric's denominator: the cases its interval rests on.
INTERVAL_CASES = {"auc": lambda p, n: min(p, n), "recall": lambda p, n: p, "specificity": lambda p, n: n,
                  "binary_accuracy": lambda p, n: p + n}


def slice_name(slice_key) -> str:
    parts = []
    for item in slice_key.single_slice_keys:
        value = item.bytes_value.decode() if item.HasField("bytes_value") else (
            item.int64_value if item.HasField("int64_value") else item.float_value)
        parts.append(f"{item.column}={value}")
    return ", ".join(parts) or "overall"


def slice_metrics(evaluation_uri: str, metric_names: Optional[Iterable[str]] = None) -> Dict[str, Dict[str, float]]:
    """{slice name: {metric key: value}} for the candidate model (baseline and diffs left out), of the metrics
    named in `metric_names` (default: every metric TFMA wrote).

    Metrics of the `decision_score` output are those at the model's tuned threshold: `<key>@threshold`.
    TFMA's 95% interval of a metric is `<key>:lower` and `<key>:upper`; the slice's class counts are
    `positives` and `negatives`.
    """
    wanted = set(metric_names) if metric_names is not None else None
    table: Dict[str, Dict[str, float]] = {}
    for metrics in tfma.load_metrics(evaluation_uri):
        row = table.setdefault(slice_name(metrics.slice_key), {})
        for item in metrics.metric_keys_and_values:
            key = item.key
            if (wanted is not None and key.name not in wanted) or key.is_diff or key.model_name not in ("", "candidate"):
                continue
            name = key.name + (AT_THRESHOLD_SUFFIX if key.output_name == DECISION_OUTPUT else "")
            if item.value.HasField("confusion_matrix_at_thresholds") and key.output_name != DECISION_OUTPUT:
                matrix = item.value.confusion_matrix_at_thresholds.matrices[0]
                row[POSITIVES] = matrix.true_positives + matrix.false_negatives
                row[NEGATIVES] = matrix.true_negatives + matrix.false_positives
            if not item.value.HasField("double_value"):
                continue
            row[name] = item.value.double_value.value
            interval = item.confidence_interval
            if interval.lower_bound.HasField("double_value") and interval.upper_bound.HasField("double_value"):
                row[name + LOWER] = interval.lower_bound.double_value.value
                row[name + UPPER] = interval.upper_bound.double_value.value
    return table


def interval_cell(row: Dict[str, float], key: str, digits: int = 3) -> str:
    """`value [lower, upper]` (TFMA's 95% interval, clipped to [0, 1]); `value (n=9: too few for a CI)` when
    the metric's denominator in this slice is under MIN_CASES_FOR_INTERVAL; `-` when undefined."""
    value = row.get(key)
    if value is None or value != value:
        return "-"
    shown = f"{value:.{digits}f}"
    cases = INTERVAL_CASES.get(key.split("@")[0])
    if cases is None or POSITIVES not in row:
        return shown
    count = int(cases(row[POSITIVES], row[NEGATIVES]))
    if count < MIN_CASES_FOR_INTERVAL:
        return f"{shown} (n={count}: too few for a CI)"
    if key + LOWER not in row:
        return f"{shown} (no CI computed)"
    lower, upper = (min(1.0, max(0.0, row[key + bound])) for bound in (LOWER, UPPER))
    return f"{shown} [{lower:.{digits}f}, {upper:.{digits}f}]"
