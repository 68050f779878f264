"""The metric and slice vocabulary: every name the Evaluator writes and its readers look up, in one place.

TFMA keys a metric by its name (`auc`, `binary_accuracy`); this pipeline reads a metric of the `decision_score`
output (the model's tuned threshold) back as `<key>@threshold`, its 95% interval as `<key>:lower` and
`<key>:upper`, the lower-bound metric of the site gate (pipeline/interval_metrics.py) as `<key>_lower_bound`, and
a slice as `feature=value, feature=value` (`overall` when unsliced). The Evaluator config (pipeline/evaluation.py),
the report (components/report/) and the CLI's compare and run summary read every such name from here, so a
renamed key cannot leave a reader looking up a key no longer written; tests/metrics_vocabulary_test.py fails on
a spelling of them anywhere else.

It lives in components/, below the pipeline and the CLI and beside the report, so all of them can import it, and
imports no TensorFlow: naming a metric costs nothing.
"""

from typing import Dict, Iterable, List, Mapping, Tuple

# The keys TFMA emits for the pipeline's metrics.
EXAMPLE_COUNT = "example_count"
AUC = "auc"
AUC_PR = "auc_precision_recall"
ACCURACY = "binary_accuracy"
RECALL = "recall"  # sensitivity
SPECIFICITY = "specificity"
PRECISION = "precision"
F1 = "f1_score"
BRIER = "brier_score"
CALIBRATION = "calibration"  # mean prediction / mean label
CONFUSION_MATRIX = "confusion_matrix_at_thresholds"
# The lower 95% bound of (candidate AUC - baseline AUC), paired bootstrap (pipeline/non_inferiority.py).
AUC_DIFFERENCE_LOWER_BOUND = "auc_difference_lower_bound"

# (TFMA class name, the key it emits, extra config), in the Evaluator's order. tests/evaluation_test.py checks
# each key against the name TFMA gives the class, so no threshold or table can name a metric that isn't there.
METRICS = (
    ("ExampleCount", EXAMPLE_COUNT, None),
    ("AUC", AUC, None),
    ("AUCPrecisionRecall", AUC_PR, None),
    ("BinaryAccuracy", ACCURACY, None),
    ("Recall", RECALL, None),
    ("Specificity", SPECIFICITY, None),
    ("Precision", PRECISION, None),
    ("F1Score", F1, None),
    ("MeanSquaredError", BRIER, {"name": BRIER}),  # Brier score on probabilities
    ("Calibration", CALIBRATION, None),
    ("ConfusionMatrixAtThresholds", CONFUSION_MATRIX, {"thresholds": [0.5]}),
)
CLASS_OF = {key: class_name for class_name, key, _ in METRICS}
# The metrics that depend on a threshold: computed again at the model's tuned one, read back as `<key>@threshold`.
THRESHOLD_DEPENDENT = (ACCURACY, RECALL, SPECIFICITY, PRECISION, F1, CONFUSION_MATRIX)

# How the Evaluator computes the 95% intervals (pipeline/evaluation.py maps each to TFMA's settings).
ANALYTIC, BOOTSTRAP, JACKKNIFE, NO_INTERVALS = "analytic", "bootstrap", "jackknife", "none"
DEFAULT_INTERVALS = ANALYTIC

AT_THRESHOLD_SUFFIX = "@threshold"
LOWER, UPPER = ":lower", ":upper"  # a metric's 95% interval in a row of read-back metrics
LOWER_BOUND_SUFFIX = "_lower_bound"  # the metric a gate judges: another metric's lower 95% bound
# The analytic interval's ends, written as metrics of their own (pipeline/interval_metrics.py).
CI_LOWER_SUFFIX, CI_UPPER_SUFFIX = "_ci_lower", "_ci_upper"
POSITIVES, NEGATIVES = "positives", "negatives"  # a slice's PNEUMONIA and NORMAL counts in a row


def at_threshold(key: str) -> str:
    """The read-back key of metric `key` computed at the model's tuned threshold."""
    return key + AT_THRESHOLD_SUFFIX


def base_metric(key: str) -> str:
    """The metric a read-back key measures, wherever the threshold: `recall` for `recall@threshold`."""
    return key[: -len(AT_THRESHOLD_SUFFIX)] if key.endswith(AT_THRESHOLD_SUFFIX) else key


def interval_keys(key: str) -> Tuple[str, str]:
    """The keys of the lower and upper end of metric `key`'s 95% interval."""
    return key + LOWER, key + UPPER


def lower_bound_key(key: str) -> str:
    """The key of the metric judging `key`'s lower 95% bound (pipeline/interval_metrics.py)."""
    return key + LOWER_BOUND_SUFFIX


def analytic_interval_keys(key: str) -> Tuple[str, str]:
    """The keys of the metrics holding the ends of metric `key`'s analytic 95% interval."""
    return key + CI_LOWER_SUFFIX, key + CI_UPPER_SUFFIX


def interval_end(key: str) -> Tuple[str, str]:
    """(metric, LOWER or UPPER) for the key of an analytic interval's end (`recall_ci_lower`); ("", "") else."""
    for suffix, end in ((CI_LOWER_SUFFIX, LOWER), (CI_UPPER_SUFFIX, UPPER)):
        if key.endswith(suffix):
            return key[: -len(suffix)], end
    return "", ""


# What the HTML report calls each metric, in its table's column order.
METRIC_TITLES = {
    EXAMPLE_COUNT: "examples",
    AUC: "AUC",
    AUC_PR: "AUC-PR",
    ACCURACY: "accuracy",
    PRECISION: "precision",
    RECALL: "sensitivity (recall)",
    SPECIFICITY: "specificity",
    F1: "F1",
    BRIER: "Brier",
    CALIBRATION: "mean prediction / mean label",
    at_threshold(ACCURACY): "accuracy at tuned",
    at_threshold(PRECISION): "precision at tuned",
    at_threshold(RECALL): "sensitivity at tuned",
    at_threshold(SPECIFICITY): "specificity at tuned",
    at_threshold(F1): "F1 at tuned",
}
# What the CLI's text tables (`pneumonia compare`, the run summary) call them: narrow columns.
SHORT_TITLES = {
    EXAMPLE_COUNT: "examples",
    AUC: "AUC",
    ACCURACY: "acc@0.5",
    RECALL: "sens@0.5",
    SPECIFICITY: "spec@0.5",
    F1: "F1@0.5",
    at_threshold(ACCURACY): "acc@thr",
    at_threshold(RECALL): "sens@thr",
    at_threshold(SPECIFICITY): "spec@thr",
    at_threshold(F1): "F1@thr",
}

# Metrics with no meaning on a slice of one class (e.g. label=0, or the external set's all-NORMAL RSNA images),
# where TFMA still reports a number, often 0, that would read as a failure.
TWO_CLASS_METRICS = (AUC, AUC_PR, F1, at_threshold(F1))
NEEDS_POSITIVES = (PRECISION, at_threshold(PRECISION), CALIBRATION)


def undefined_metrics(row: Mapping[str, float]) -> Tuple[str, ...]:
    """The metric keys of `row` that its slice cannot define: two-class metrics when recall (no PNEUMONIA) or
    specificity (no NORMAL) is undefined, and precision and calibration when there is no PNEUMONIA."""

    def missing(key: str) -> bool:
        return row.get(key) is None or row[key] != row[key]

    no_positives, no_negatives = missing(RECALL), missing(SPECIFICITY)
    return TWO_CLASS_METRICS * (no_positives or no_negatives) + NEEDS_POSITIVES * no_positives


# The example features the Evaluator slices on.
SPLIT, DATASET, SOURCE, LABEL, PATHOGEN = "split", "dataset", "source", "label", "pathogen"
# Every figure is per split; the uncrossed slices exist for the pooled view TFX gives, and say so.
SLICE_FEATURES = (
    (SPLIT,),
    (SPLIT, DATASET),
    (SPLIT, SOURCE),
    (SPLIT, LABEL),
    (SPLIT, PATHOGEN),
    (SPLIT, DATASET, LABEL),
    # Subgroups a review board asks for (from DICOM; `unknown` for JPEG/PNG): view position, sex, age band.
    (SPLIT, "view_position"),
    (SPLIT, "sex"),
    (SPLIT, "age_band"),
    (SPLIT, "patient_in_train"),
    (SPLIT, LABEL, "patient_in_train"),  # unseen vs seen patients
    (DATASET,),
    (LABEL,),
    (PATHOGEN,),
    (DATASET, LABEL),
)
CROSSING_FEATURES = (LABEL, PATHOGEN)  # the report collapses a split's slices crossed with these
OVERALL = "overall"  # the unsliced slice: every evaluated split pooled
POOLED = "all evaluated splits pooled"  # what a table calls it
TRAIN_SPLIT, TEST_SPLIT = "train", "test"


def slice_name(parts: Iterable[Tuple[str, object]]) -> str:
    """`feature=value, feature=value` from (feature, value) pairs in TFMA's order; OVERALL for none."""
    return ", ".join(f"{feature}={value}" for feature, value in parts) or OVERALL


def slice_parts(name: str) -> Dict[str, str]:
    """{feature: value} of a slice name; {} for OVERALL."""
    return dict(part.split("=", 1) for part in name.split(", ")) if "=" in name else {}


def is_split_slice(name: str) -> bool:
    """`dataset=..., split=...`: one whole split (each split is one dataset), not a crossing with label."""
    return set(slice_parts(name)) == {DATASET, SPLIT}


def ordered_splits(split_names: Iterable[str], blessing_split: str) -> List[str]:
    """Train, validation (the blessing split), test, then any other split by name: the order tables show."""
    names = set(split_names)
    fixed = [TRAIN_SPLIT, blessing_split, TEST_SPLIT]
    return [split for split in fixed if split in names] + sorted(names - set(fixed))
