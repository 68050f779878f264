"""TFMA configuration: clinical metrics per split and dataset, and the blessing rule.

TFX's Evaluator pools every example split into one set, so each split is its own slice (the `split`
feature) and every other slice is also crossed with `split`. The blessing thresholds apply to the
validation slice only: test and external splits are reported, never used to choose anything. The one
exception is opt-in and chooses nothing either: `--non-inferiority-margin` vetoes a push whose AUC on the
pediatric test split is credibly worse than the baseline's (a guard against forgetting, asked for by site
training); it tunes no threshold, epoch or recipe.

Metrics at 0.5 are computed on the model's `probability`; the threshold-dependent ones are computed
again on its `decision_score`, which puts the model's tuned threshold at 0.5, so TFMA also reports them
at the operating point the model actually serves (keys suffixed `@threshold` when read back).

The metrics the tables show carry a 95% interval: closed-form by default (DeLong for the AUC, Wilson at the
threshold, the normal interval of the Brier score: `interval_metrics.AnalyticIntervals`), or TFMA's bootstrap or
jackknife for every metric at many times the Evaluator's time (bench/evaluator_intervals_bench.py). An optional
site gate bounds sensitivity and specificity on the site's calibration slice, on the point estimate or on the
lower 95% bound (`<key>_lower_bound`, from either kind of interval). The metrics' keys and the slices' features are
components/metrics_vocabulary.py's, which the report and the CLI read them back by.
"""

import dataclasses
import json
from typing import Dict, List, Optional

import tensorflow_model_analysis as tfma
from google.protobuf import wrappers_pb2

from components import metrics_vocabulary as vocabulary
from pipeline import interval_metrics, non_inferiority
from trainer.signatures import DECISION_OUTPUT, PROBABILITY_OUTPUT


def blessing_threshold(min_auc: float, max_auc_drop: float, blessing_split: str) -> tfma.PerSliceMetricThreshold:
    """AUC on the validation slice: above `min_auc`, and no more than `max_auc_drop` below the baseline."""
    return tfma.PerSliceMetricThreshold(
        slicing_specs=[tfma.SlicingSpec(feature_values={vocabulary.SPLIT: blessing_split})],
        threshold=tfma.MetricThreshold(
            value_threshold=tfma.GenericValueThreshold(lower_bound={"value": min_auc}),
            change_threshold=tfma.GenericChangeThreshold(
                direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -max_auc_drop}
            ),
        ),
    )


@dataclasses.dataclass(frozen=True)
class SiteGate:
    """Absolute bounds a model must meet on the site's calibration slice, at its served threshold."""

    split: str
    min_sensitivity: Optional[float] = None
    min_specificity: Optional[float] = None
    on_lower_bound: bool = False  # judge the lower 95% confidence bound instead of the point estimate

    def __post_init__(self):
        for key, value in self._bounds_by_key().items():
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{GATE_NAMES[key][1]} {value} must be between 0 and 1")

    def _bounds_by_key(self) -> Dict[str, Optional[float]]:
        """The bound on each gated metric, by its key (None: that metric is not gated)."""
        return {vocabulary.RECALL: self.min_sensitivity, vocabulary.SPECIFICITY: self.min_specificity}

    def bounds(self) -> List[tuple]:
        """(TFMA metric key judged, TFMA class name it reads, lower bound) per bound set."""
        return [
            (vocabulary.lower_bound_key(key) if self.on_lower_bound else key, vocabulary.CLASS_OF[key], value)
            for key, value in self._bounds_by_key().items()
            if value is not None
        ]


# The site gate's judged metrics, by key: what a failure line calls them and the flag that sets the bound.
GATE_NAMES = {
    vocabulary.RECALL: ("sensitivity", "--site-min-sensitivity"),
    vocabulary.SPECIFICITY: ("specificity", "--site-min-specificity"),
}


def _site_threshold(split: str, lower_bound: float) -> tfma.PerSliceMetricThreshold:
    return tfma.PerSliceMetricThreshold(
        slicing_specs=[tfma.SlicingSpec(feature_values={vocabulary.SPLIT: split})],
        threshold=tfma.MetricThreshold(value_threshold=tfma.GenericValueThreshold(lower_bound={"value": lower_bound})),
    )


def _metric_config(class_name: str, extra: Optional[Dict], module: str = "") -> tfma.MetricConfig:
    config = tfma.MetricConfig(class_name=class_name, module=module)
    if extra:
        config.config = json.dumps(extra)[1:-1]  # TFMA takes the JSON object's members
    return config


# How the Evaluator computes each metric's 95% interval: "analytic" (closed form, one more pass over each slice:
# interval_metrics.AnalyticIntervals), TFMA's "bootstrap" (Poisson, 20 replicates) or "jackknife" (20 buckets),
# each recomputing every slice 20 more times, or "none".
INTERVAL_METHODS = {
    vocabulary.ANALYTIC: None,
    vocabulary.BOOTSTRAP: tfma.ConfidenceIntervalOptions.POISSON_BOOTSTRAP,
    vocabulary.JACKKNIFE: tfma.ConfidenceIntervalOptions.JACKKNIFE,
    vocabulary.NO_INTERVALS: None,
}


def _analytic_intervals(keys) -> tfma.MetricConfig:
    bounded = [key for key in interval_metrics.ANALYTIC_METRICS if key in keys]
    return _metric_config("AnalyticIntervals", {"metrics": bounded}, module=interval_metrics.__name__)


def _gate(served: Dict[str, tfma.MetricConfig], site_gate: SiteGate, confidence_intervals: str) -> None:
    """Bounds the gated metrics of the decision output on the site's split only: the metric's own config (a
    point estimate), or a `LowerBound` of the run's kind of interval added to `served`."""
    for judged, _, value in site_gate.bounds():
        if judged not in served:
            metric = judged[: -len(vocabulary.LOWER_BOUND_SUFFIX)]
            served[judged] = _metric_config(
                "LowerBound", {"metric": metric, "intervals": confidence_intervals}, module=interval_metrics.__name__
            )
        served[judged].per_slice_thresholds.append(_site_threshold(site_gate.split, value))


# The split non-inferiority is judged on: the pediatric test split, which a site model must not forget.
NON_INFERIORITY_SPLIT = vocabulary.TEST_SPLIT


def non_inferiority_check(margin: float) -> tfma.MetricConfig:
    """The candidate's paired-bootstrap lower bound of its AUC minus the baseline's, on NON_INFERIORITY_SPLIT,
    at least -margin (a change threshold: on a first run, with no baseline, TFMA drops it)."""
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"--non-inferiority-margin {margin} must be in [0, 1)")
    config = _metric_config("AUCDifferenceLowerBound", None, module=non_inferiority.__name__)
    config.per_slice_thresholds.append(
        tfma.PerSliceMetricThreshold(
            slicing_specs=[tfma.SlicingSpec(feature_values={vocabulary.SPLIT: NON_INFERIORITY_SPLIT})],
            threshold=tfma.MetricThreshold(
                change_threshold=tfma.GenericChangeThreshold(
                    direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -margin}
                )
            ),
        )
    )
    return config


def create_eval_config(
    min_auc: float,
    max_auc_drop: float,
    blessing_split: str,
    site_gate: Optional[SiteGate] = None,
    confidence_intervals: str = vocabulary.DEFAULT_INTERVALS,
    non_inferiority_margin: Optional[float] = None,
) -> tfma.EvalConfig:
    """The metrics, slices and blessing; `site_gate` adds bounds at the served threshold (the
    `decision_score` output) on its split. `confidence_intervals`: one of INTERVAL_METHODS."""
    if confidence_intervals not in INTERVAL_METHODS:
        raise ValueError(f"confidence_intervals {confidence_intervals!r}: choose {', '.join(INTERVAL_METHODS)}")
    if site_gate and site_gate.on_lower_bound and confidence_intervals == vocabulary.NO_INTERVALS:
        raise ValueError("--gate-on-lower-bound needs confidence intervals (confidence_intervals: none is set)")
    method = INTERVAL_METHODS[confidence_intervals]
    at_half, served = [], {}
    for class_name, key, extra in vocabulary.METRICS:
        config = _metric_config(class_name, extra)
        if key == vocabulary.AUC:
            config.per_slice_thresholds.append(blessing_threshold(min_auc, max_auc_drop, blessing_split))
        at_half.append(config)
        if key in vocabulary.THRESHOLD_DEPENDENT:
            served[key] = _metric_config(class_name, extra)
    if site_gate:
        _gate(served, site_gate, confidence_intervals)
    at_threshold = list(served.values())
    if non_inferiority_margin is not None:
        at_half.append(non_inferiority_check(non_inferiority_margin))
    if confidence_intervals == vocabulary.ANALYTIC:
        at_half.append(_analytic_intervals(vocabulary.CLASS_OF))
        at_threshold.append(_analytic_intervals(vocabulary.THRESHOLD_DEPENDENT))
    outputs = (PROBABILITY_OUTPUT, DECISION_OUTPUT)
    return tfma.EvalConfig(
        model_specs=[
            tfma.ModelSpec(
                signature_name="serving_default",
                label_keys={o: vocabulary.LABEL for o in outputs},
                prediction_keys={o: o for o in outputs},
            )
        ],
        slicing_specs=[tfma.SlicingSpec()]
        + [tfma.SlicingSpec(feature_keys=list(keys)) for keys in vocabulary.SLICE_FEATURES],
        metrics_specs=[
            tfma.MetricsSpec(metrics=at_half, output_names=[PROBABILITY_OUTPUT]),
            tfma.MetricsSpec(metrics=at_threshold, output_names=[DECISION_OUTPUT]),
        ],
        options=tfma.Options(
            compute_confidence_intervals=wrappers_pb2.BoolValue(value=method is not None),
            confidence_intervals=tfma.ConfidenceIntervalOptions(method=method or 0),
        ),
    )
