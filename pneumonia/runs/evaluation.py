"""A run's TFMA results: the pipeline's metrics per slice, and why a model was not blessed, in one line each."""

from typing import Dict, List, Optional

import tensorflow_model_analysis as tfma
from google.protobuf import text_format

from components import metrics_vocabulary as vocabulary
from components.report import tfma_metrics
from components.report.tfma_metrics import slice_name
from pipeline.evaluation import GATE_NAMES
from trainer.signatures import DECISION_OUTPUT


def slice_metrics(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
    """The pipeline's metrics (components/metrics_vocabulary.py METRICS) per slice: see `tfma_metrics.slice_metrics`."""
    return tfma_metrics.slice_metrics(evaluation_uri, [key for _, key, _ in vocabulary.METRICS])


def validation_failures(evaluation_uri: str) -> List[str]:
    """Why the model was not blessed: one line per failed threshold."""
    failures = []
    for per_slice in tfma.load_validation_result(evaluation_uri).metric_validations_per_slice:
        for failure in per_slice.failures:
            key = failure.metric_key
            named = site_gate_failure(slice_name(per_slice.slice_key), failure) or non_inferiority_failure(
                slice_name(per_slice.slice_key), failure
            )
            if named:
                failures.append(named)
                continue
            metric = f"{key.name} change vs baseline" if key.is_diff else key.name
            bound = text_format.MessageToString(failure.metric_threshold, as_one_line=True)
            failures.append(
                f"{slice_name(per_slice.slice_key)}: {metric} = "
                f"{failure.metric_value.double_value.value:.4f} fails {bound} {failure.message}".rstrip()
            )
    return failures


def site_gate_failure(slice_shown: str, failure) -> Optional[str]:
    """One line naming the failed site bound (`--site-min-...`), or None for another threshold."""
    key = failure.metric_key
    if key.output_name != DECISION_OUTPUT or key.is_diff:
        return None
    suffix = vocabulary.LOWER_BOUND_SUFFIX
    base = key.name[: -len(suffix)] if key.name.endswith(suffix) else key.name
    if base not in GATE_NAMES:
        return None
    measure, flag = GATE_NAMES[base]
    judged = f"{measure} lower 95% bound" if base != key.name else measure
    bound = failure.metric_threshold.value_threshold.lower_bound.value
    return (
        f"site gate: {judged} {failure.metric_value.double_value.value:.3f} on {slice_shown} at the served "
        f"threshold is below {flag} {bound:g}"
    )


def non_inferiority_failure(slice_shown: str, failure) -> Optional[str]:
    """One line naming a failed non-inferiority check (`--non-inferiority-margin`), or None for another."""
    if failure.metric_key.name != vocabulary.AUC_DIFFERENCE_LOWER_BOUND or not failure.metric_key.is_diff:
        return None
    margin = -failure.metric_threshold.change_threshold.absolute.value
    return (
        f"non-inferiority: the lower 95% bound of (new AUC - baseline AUC) on {slice_shown}, paired bootstrap, is "
        f"{failure.metric_value.double_value.value:.3f}, below -{margin:g} (--non-inferiority-margin {margin:g})"
    )
