"""Non-inferiority to the baseline model as a TFMA metric: the lower 95% bound of the paired bootstrap of
(candidate AUC - baseline AUC) on the same examples.

TFMA's change thresholds compare point estimates only, so a new model a hair worse by chance and a model truly
worse look the same to them. This metric resamples the examples (Poisson weights, shared by both models, so the
pairing is kept) and reads the 2.5th percentile of the AUC difference. It is written for the candidate as
`auc_difference_lower_bound` and for the baseline as 0 (a model is not inferior to itself), so TFMA's own diff of
the two is the bound, and a change threshold `absolute: -margin` judges it: on a first run, with no baseline,
TFMA drops change thresholds and the model is judged by the rest alone.

The Evaluator imports this module by name (`MetricConfig.module`), like pipeline/interval_metrics.py.
"""

from typing import Dict, Iterable, List, Optional, Tuple

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types, metric_util

from components import metrics_vocabulary as vocabulary

REPLICATES = 1000
SEED = 20261202  # fixed: the same evaluation gives the same bound, so a cached run and a fresh one agree


def weighted_aucs(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The AUC (Mann-Whitney, ties half) under each row of `weights` (replicates x examples)."""
    order = np.argsort(scores, kind="stable")
    positive, sorted_scores, weights = labels[order] >= 0.5, scores[order], weights[:, order]
    negative_weights = weights * ~positive
    below_and_at = np.cumsum(negative_weights, axis=1)
    _, first, group = np.unique(sorted_scores, return_index=True, return_inverse=True)
    last = np.r_[first[1:], sorted_scores.size] - 1
    below = np.where(first > 0, below_and_at[:, np.maximum(first - 1, 0)], 0.0)
    tied = below_and_at[:, last] - below
    outranked = below[:, group] + 0.5 * tied[:, group]
    positive_total, negative_total = (weights * positive).sum(axis=1), negative_weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (weights * positive * outranked).sum(axis=1) / (positive_total * negative_total)


def paired_auc_difference(
    labels: np.ndarray, candidate: np.ndarray, baseline: np.ndarray, replicates: int = REPLICATES, seed: int = SEED
) -> Tuple[float, float, float]:
    """(candidate AUC - baseline AUC on all examples, and the 2.5th and 97.5th percentiles of its paired
    bootstrap); NaNs when the examples hold one class only."""
    labels = np.asarray(labels, np.float64)
    if labels.size == 0 or labels.min() == labels.max():
        return (np.nan, np.nan, np.nan)
    ones = np.ones((1, labels.size))
    point = float(weighted_aucs(labels, candidate, ones)[0] - weighted_aucs(labels, baseline, ones)[0])
    weights = np.random.default_rng(seed).poisson(1.0, (replicates, labels.size)).astype(np.float64)
    differences = weighted_aucs(labels, candidate, weights) - weighted_aucs(labels, baseline, weights)
    lower, upper = np.nanpercentile(differences, [2.5, 97.5])
    return point, float(lower), float(upper)


class _PairedScores(beam.CombineFn):
    """Collects (label, candidate score, baseline score) per example of a slice; the bootstrap runs once, at
    the end, on all of them."""

    def __init__(self, keys: Dict[str, metric_types.MetricKey], eval_config, models: Tuple[str, str], output: str):
        self._keys, self._eval_config, self._models, self._output = keys, eval_config, models, output

    def create_accumulator(self) -> List[np.ndarray]:
        return []

    def _scores(self, element, model_name: str) -> Tuple[np.ndarray, np.ndarray]:
        pairs = [
            (metric_util.safe_to_scalar(label), metric_util.safe_to_scalar(prediction))
            for label, prediction, _ in metric_util.to_label_prediction_example_weight(
                element, eval_config=self._eval_config, model_name=model_name, output_name=self._output
            )
        ]
        return tuple(np.array(column, np.float64) for column in zip(*pairs)) if pairs else (np.empty(0),) * 2

    def add_input(self, rows: List[np.ndarray], element: metric_types.StandardMetricInputs) -> List[np.ndarray]:
        (labels, candidate), (_, baseline) = (self._scores(element, model) for model in self._models)
        if labels.size:
            rows.append(np.stack([labels, candidate, baseline], axis=1))
        return rows

    def merge_accumulators(self, accumulators: Iterable[List[np.ndarray]]) -> List[np.ndarray]:
        return [rows for accumulator in accumulators for rows in accumulator]

    def extract_output(self, rows: List[np.ndarray]) -> Dict[metric_types.MetricKey, float]:
        table = np.concatenate(rows) if rows else np.empty((0, 3))
        _, lower, _ = paired_auc_difference(table[:, 0], table[:, 1], table[:, 2])
        return {self._keys["candidate"]: lower, self._keys["baseline"]: 0.0}


def _computations(
    name: str,
    eval_config=None,
    model_names: Optional[List[str]] = None,
    output_names: Optional[List[str]] = None,
    example_weighted: bool = False,
    **_,
) -> metric_types.MetricComputations:
    baselines = [spec.name for spec in (eval_config.model_specs if eval_config else []) if spec.is_baseline]
    candidates = [model for model in model_names or [] if model not in baselines]
    if not baselines or not candidates:
        return []  # no baseline (a first run): nothing to be inferior to
    models = (candidates[0], baselines[0])
    computations = []
    for output_name in output_names or [""]:
        keys = {
            role: metric_types.MetricKey(
                name=name, model_name=model, output_name=output_name, example_weighted=example_weighted
            )
            for role, model in zip(("candidate", "baseline"), models)
        }
        computations.append(
            metric_types.MetricComputation(
                keys=list(keys.values()),
                preprocessors=None,
                combiner=_PairedScores(keys, eval_config, models, output_name),
            )
        )
    return computations


class AUCDifferenceLowerBound(tfma.metrics.Metric):
    """The candidate's `auc_difference_lower_bound` over the baseline (0 for the baseline itself)."""

    def __init__(self, name: str = vocabulary.AUC_DIFFERENCE_LOWER_BOUND):
        super().__init__(_computations, name=name)

    @property
    def compute_confidence_interval(self) -> bool:
        return False  # it is itself a bound
