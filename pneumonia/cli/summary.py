"""What `pneumonia run` prints after a run: where everything went, and the metrics table per split."""

import os
from typing import Dict, Optional

from components import metrics_vocabulary as vocabulary
from components.report import tfma_metrics
from pneumonia.runs import evaluation
from pneumonia.runs.store import RunOutputs


def format_table(table: Dict[str, Dict[str, float]]) -> str:
    """Per split (each split is one dataset) and pooled, with the clinical metric names; `@thr` is at the
    model's tuned threshold (chosen on validation), `@0.5` at 0.5; each with its 95% interval."""
    keys = (
        vocabulary.EXAMPLE_COUNT,
        vocabulary.AUC,
        vocabulary.ACCURACY,
        vocabulary.RECALL,
        vocabulary.SPECIFICITY,
        *(vocabulary.at_threshold(key) for key in (vocabulary.ACCURACY, vocabulary.RECALL, vocabulary.SPECIFICITY)),
    )
    per_split = sorted(name for name in table if vocabulary.is_split_slice(name))
    pooled = sorted(name for name in table if set(vocabulary.slice_parts(name)) == {vocabulary.DATASET})
    labels = {name: name for name in per_split}
    labels.update({name: f"{name} (splits pooled)" for name in pooled})
    if vocabulary.OVERALL in table:
        labels[vocabulary.OVERALL] = vocabulary.POOLED
    rows = [["slice"] + [vocabulary.SHORT_TITLES[key] for key in keys]]
    for name, label in labels.items():
        rows.append(
            [label]
            + [
                format_count(table[name].get(key))
                if key == vocabulary.EXAMPLE_COUNT
                else tfma_metrics.interval_cell(table[name], key)
                for key in keys
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(keys) + 1)]
    return "\n".join(
        (row[0].ljust(widths[0] + 2) + "".join(cell.rjust(w + 2) for cell, w in zip(row[1:], widths[1:]))).rstrip()
        for row in rows
    )


def format_count(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"


def run_summary(outputs: RunOutputs, config) -> str:
    """Where the model, evaluation, report and push went, the metrics table, what the ThresholdCalibrator did,
    and why a model was not blessed, one line each."""
    lines = ["", f"model:      {outputs.model}"]
    if outputs.calibration:
        lines.append(f"calibrated: {outputs.calibration}")
    lines.append(f"evaluation: {outputs.evaluation}")
    if outputs.evaluation:
        lines.append(format_table(evaluation.slice_metrics(outputs.evaluation)))
        lines += [f"not blessed: {failure}" for failure in evaluation.validation_failures(outputs.evaluation)]
    lines += [f"report:     {outputs.report}", f"blessed:    {outputs.blessed}"]
    if outputs.pushed:
        lines.append(f"pushed:     {outputs.pushed_destination}")
    else:
        note = outputs.push_note or ("model not blessed" if outputs.blessed is False else "not pushed")
        lines.append(
            f"pushed:     no ({note}); serving directory {os.path.join(config.serving_dir, config.model_name)}"
        )
    return "\n".join(lines)
