"""A TFMA metric whose value is the lower 95% confidence bound of another metric, so that a TFMA
threshold (and with it the Evaluator's blessing) can judge a bound rather than the point estimate.

TFMA's validator compares a metric's unsampled value; the bootstrap interval is only written out. This
metric is a `CIDerivedMetricComputation`: TFMA runs it after the Poisson bootstrap, on the same slice's
bootstrapped value. Without confidence intervals (or on a slice TFMA could not bootstrap) its value is
NaN, which fails any bound: a gate on a lower bound never passes for want of one.

The Evaluator imports this module by name (`MetricConfig.module`), so it must be installed where the
Evaluator runs (the Kubeflow image installs the whole project).
"""
from typing import Dict, Iterable, List, Optional

import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.utils import math_util

from components.metrics_vocabulary import RECALL, lower_bound_key


def lower_bound_of(value) -> float:
    """The lower 95% bound of a bootstrapped TFMA value (TFMA's own t-interval); NaN when it has none."""
    if isinstance(value, tfma.types.ValueWithTDistribution):
        _, lower, _ = math_util.calculate_confidence_interval(value)
        return float(lower)
    return float("nan")


def _lower_bound_computations(metric: str, name: str, model_names: Optional[List[str]] = None,
                              output_names: Optional[List[str]] = None,
                              sub_keys: Optional[Iterable] = None, example_weighted: bool = False,
                              **_) -> metric_types.MetricComputations:
    computations = []
    for model_name in model_names or [""]:
        for output_name in output_names or [""]:
            for sub_key in sub_keys or [None]:
                source = metric_types.MetricKey(name=metric, model_name=model_name, output_name=output_name,
                                                sub_key=sub_key, example_weighted=example_weighted)
                key = metric_types.MetricKey(name=name, model_name=model_name, output_name=output_name,
                                             sub_key=sub_key, example_weighted=example_weighted)

                def result(metrics: Dict, source=source, key=key) -> Dict:
                    return {key: lower_bound_of(metrics.get(source))}

                computations.append(metric_types.CIDerivedMetricComputation(keys=[key], result=result))
    return computations


class LowerBound(tfma.metrics.Metric):
    """`metric`'s lower 95% bound, as the metric `<metric>_lower_bound`. `metric` must be computed by
    the same MetricsSpec (e.g. Recall next to LowerBound(metric='recall'))."""

    def __init__(self, metric: str = RECALL, name: Optional[str] = None):
        super().__init__(_lower_bound_computations, metric=metric, name=name or lower_bound_key(metric))

    @property
    def compute_confidence_interval(self) -> bool:
        return False  # it is itself read off an interval
