"""Reads TFMA's metrics back, with their 95% intervals: shared by the report component and `pneumonia compare`.

Here, below both, so the component needs nothing from `pneumonia/` or `pipeline/`. The names it writes into a
row (keys, suffixes, slice names) are components/metrics_vocabulary.py's.
"""

from typing import Dict, Iterable, Optional

import tensorflow_model_analysis as tfma

from components import metrics_vocabulary as vocabulary
from trainer.signatures import DECISION_OUTPUT

# An interval over fewer cases than this says little (and DeLong's and the bootstrap's are unreliable there): such a
# slice shows its case count instead of an interval.
MIN_CASES_FOR_INTERVAL = 20
# Each reported metric's denominator: the cases its interval rests on.
INTERVAL_CASES = {
    vocabulary.AUC: lambda p, n: min(p, n),
    vocabulary.RECALL: lambda p, n: p,
    vocabulary.SPECIFICITY: lambda p, n: n,
    vocabulary.ACCURACY: lambda p, n: p + n,
}


def slice_name(slice_key) -> str:
    """The vocabulary's name of a TFMA SliceKey proto."""

    def value(item):
        if item.HasField("bytes_value"):
            return item.bytes_value.decode()
        return item.int64_value if item.HasField("int64_value") else item.float_value

    return vocabulary.slice_name((item.column, value(item)) for item in slice_key.single_slice_keys)


def _is_candidate(key) -> bool:
    """A metric of the evaluated model itself: not the baseline's, not a difference between the two."""
    return not key.is_diff and key.model_name in ("", "candidate")


def slice_metrics(evaluation_uri: str, metric_names: Optional[Iterable[str]] = None) -> Dict[str, Dict[str, float]]:
    """{slice name: {metric key: value}} for the candidate model (baseline and diffs left out), of the metrics
    named in `metric_names` (default: every metric TFMA wrote).

    Metrics of the `decision_score` output are those at the model's tuned threshold: `<key>@threshold`.
    A metric's 95% interval is `<key>:lower` and `<key>:upper`, from the analytic interval's metrics
    (`<key>_ci_lower`, `<key>_ci_upper`) or from TFMA's bootstrap; the slice's class counts are
    `positives` and `negatives`.
    """
    wanted = set(metric_names) if metric_names is not None else None
    table: Dict[str, Dict[str, float]] = {}
    for metrics in tfma.load_metrics(evaluation_uri):
        row = table.setdefault(slice_name(metrics.slice_key), {})
        for item in metrics.metric_keys_and_values:
            key = item.key
            bounded, end = vocabulary.interval_end(key.name)
            if (wanted is not None and (bounded or key.name) not in wanted) or not _is_candidate(key):
                continue
            at_threshold = key.output_name == DECISION_OUTPUT
            name = vocabulary.at_threshold(bounded or key.name) if at_threshold else (bounded or key.name)
            if key.name == vocabulary.CONFUSION_MATRIX and not at_threshold:  # its cells count the slice's classes
                matrix = item.value.confusion_matrix_at_thresholds.matrices[0]
                row[vocabulary.POSITIVES] = matrix.true_positives + matrix.false_negatives
                row[vocabulary.NEGATIVES] = matrix.true_negatives + matrix.false_positives
            if not item.value.HasField("double_value"):
                continue
            if bounded:
                row[name + end] = item.value.double_value.value
                continue
            row[name] = item.value.double_value.value
            interval = item.confidence_interval
            if interval.lower_bound.HasField("double_value") and interval.upper_bound.HasField("double_value"):
                lower, upper = vocabulary.interval_keys(name)
                row[lower] = interval.lower_bound.double_value.value
                row[upper] = interval.upper_bound.double_value.value
    return table


def has_interval(key: str) -> bool:
    """Whether the tables show metric `key` with its 95% interval (or its case count)."""
    return vocabulary.base_metric(key) in INTERVAL_CASES


def interval_cell(row: Dict[str, float], key: str, digits: int = 3) -> str:
    """`value [lower, upper]` (the 95% interval, clipped to [0, 1]); `value (n=9: too few for a CI)` when
    the metric's denominator in this slice is under MIN_CASES_FOR_INTERVAL; `-` when undefined."""
    value = row.get(key)
    if value is None or value != value:
        return "-"
    shown = f"{value:.{digits}f}"
    if not has_interval(key) or vocabulary.POSITIVES not in row:
        return shown
    cases = INTERVAL_CASES[vocabulary.base_metric(key)]
    count = int(cases(row[vocabulary.POSITIVES], row[vocabulary.NEGATIVES]))
    if count < MIN_CASES_FOR_INTERVAL:
        return f"{shown} (n={count}: too few for a CI)"
    bounds = vocabulary.interval_keys(key)
    if bounds[0] not in row:
        return f"{shown} (no CI computed)"
    lower, upper = (min(1.0, max(0.0, row[bound])) for bound in bounds)
    return f"{shown} [{lower:.{digits}f}, {upper:.{digits}f}]"
