"""Reads what the latest pipeline run produced from ML Metadata, and its TFMA metrics."""
import dataclasses
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

import tensorflow_model_analysis as tfma
from google.protobuf import text_format
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.report import tfma_metrics
from components.report.tfma_metrics import slice_name
from pipeline.evaluation import DECISION_OUTPUT, METRICS


@dataclasses.dataclass
class RunOutputs:
    model: Optional[str] = None
    evaluation: Optional[str] = None
    blessed: Optional[bool] = None
    pushed: Optional[bool] = None
    pushed_destination: Optional[str] = None
    push_note: str = ""
    report: Optional[str] = None
    calibration: Optional[str] = None  # what the ThresholdCalibrator did, in one line


def describe_calibration(props) -> str:
    """One line from a ThresholdCalibrator output's custom properties."""
    if not props["calibrated"].int_value:
        return props["note"].string_value if "note" in props else "passed through"
    return (f"threshold {props['old_threshold'].double_value:.4f} -> {props['new_threshold'].double_value:.4f} "
            f"(bootstrap 95% interval [{props['threshold_lower'].double_value:.4f}, "
            f"{props['threshold_upper'].double_value:.4f}]) on {props['calibration_normal'].int_value} NORMAL / "
            f"{props['calibration_pneumonia'].int_value} PNEUMONIA calibration images")


def open_store(metadata_path: str) -> metadata_store.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def node_executions(store: metadata_store.MetadataStore, pipeline_name: str, node: str) -> list:
    """Every execution of one pipeline node, oldest first."""
    context = store.get_context_by_type_and_name("node", f"{pipeline_name}.{node}")
    return sorted(store.get_executions_by_context(context.id), key=lambda e: e.id) if context else []


def is_blessed(blessing: Optional[metadata_store_pb2.Artifact]) -> Optional[bool]:
    """A ModelBlessing artifact's verdict; None when there is none yet."""
    if blessing is None or "blessed" not in blessing.custom_properties:
        return None
    return bool(blessing.custom_properties["blessed"].int_value)


def latest_run_outputs(metadata_path: str, pipeline_name: str) -> RunOutputs:
    """Output artifacts of the newest pipeline run (cached executions included)."""
    store = open_store(metadata_path)
    outputs = RunOutputs()
    pipeline = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline is None:
        return outputs
    in_pipeline = {e.id for e in store.get_executions_by_context(pipeline.id)}
    executions = []
    for run in sorted(store.get_contexts_by_type("pipeline_run"), key=lambda c: c.id, reverse=True):
        executions = [e for e in store.get_executions_by_context(run.id) if e.id in in_pipeline]
        if executions:
            break
    events = store.get_events_by_execution_ids([e.id for e in executions])
    output_ids = [e.artifact_id for e in events if e.type in (metadata_store_pb2.Event.OUTPUT,
                                                              metadata_store_pb2.Event.DECLARED_OUTPUT)]
    types = {t.id: t.name for t in store.get_artifact_types()}
    for artifact in store.get_artifacts_by_id(output_ids):
        kind = types[artifact.type_id]
        props = artifact.custom_properties
        if kind == "Model" and "calibrated" in props:  # the calibrated model: what was evaluated and pushed
            outputs.model = artifact.uri
            outputs.calibration = describe_calibration(props)
        elif kind == "Model" and outputs.calibration is None:
            outputs.model = artifact.uri
        elif kind == "ModelEvaluation":
            outputs.evaluation = artifact.uri
        elif kind == "File":  # the EvaluationReport component's folder
            outputs.report = os.path.join(artifact.uri, "index.html")
        elif kind == "ModelBlessing":
            outputs.blessed = is_blessed(artifact)
        elif kind == "PushedModel":
            outputs.pushed = bool(props["pushed"].int_value) if "pushed" in props else None
            outputs.pushed_destination = props["pushed_destination"].string_value or None
            outputs.push_note = props["skipped"].string_value if "skipped" in props else ""
    return outputs


def scored_outputs(examples_uri: str, splits: List[str], model_uri: str) -> Dict[str, tuple]:
    """{split: (its examples, the numeric outputs of the exported model's serving signature for them)} over
    every example of each split, the model loaded once."""
    from components.report import executor

    serve = executor.serving_function(model_uri)
    scored = {}
    for split in splits:
        sample = executor.read_split(examples_uri, split, cap=10 ** 9)
        scored[split] = (sample, executor.score(serve, sample.serialized))
    return scored


def score_splits(examples_uri: str, splits: List[str], model_uri: str) -> Dict[str, Tuple[np.ndarray, np.ndarray,
                                                                                         List[str]]]:
    """{split: (labels, pneumonia probabilities, source paths)} over every example of each split."""
    return {split: (np.array(sample.labels), outputs["probability"],
                    [source.split(":", 1)[1] for source in sample.sources])
            for split, (sample, outputs) in scored_outputs(examples_uri, splits, model_uri).items()}


def slice_metrics(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
    """The pipeline's metrics (pipeline/evaluation.py METRICS) per slice: see `tfma_metrics.slice_metrics`."""
    return tfma_metrics.slice_metrics(evaluation_uri, [key for _, key, _ in METRICS])


def validation_failures(evaluation_uri: str) -> List[str]:
    """Why the model was not blessed: one line per failed threshold."""
    failures = []
    for per_slice in tfma.load_validation_result(evaluation_uri).metric_validations_per_slice:
        for failure in per_slice.failures:
            key = failure.metric_key
            site_gate = site_gate_failure(slice_name(per_slice.slice_key), failure)
            if site_gate:
                failures.append(site_gate)
                continue
            metric = f"{key.name} change vs baseline" if key.is_diff else key.name
            bound = text_format.MessageToString(failure.metric_threshold, as_one_line=True)
            failures.append(f"{slice_name(per_slice.slice_key)}: {metric} = "
                            f"{failure.metric_value.double_value.value:.4f} fails {bound} {failure.message}".rstrip())
    return failures


def site_gate_failure(slice_shown: str, failure) -> Optional[str]:
    """One line naming the failed site bound (`--site-min-...`), or None for another threshold."""
    from pipeline.evaluation import GATE_NAMES
    from pipeline.interval_metrics import LOWER_BOUND_SUFFIX

    key = failure.metric_key
    if key.output_name != DECISION_OUTPUT or key.is_diff:
        return None
    base = key.name[:-len(LOWER_BOUND_SUFFIX)] if key.name.endswith(LOWER_BOUND_SUFFIX) else key.name
    if base not in GATE_NAMES:
        return None
    measure, flag = GATE_NAMES[base]
    judged = f"{measure} lower 95% bound" if base != key.name else measure
    bound = failure.metric_threshold.value_threshold.lower_bound.value
    return (f"site gate: {judged} {failure.metric_value.double_value.value:.3f} on {slice_shown} at the served "
            f"threshold is below {flag} {bound:g}")


def format_table(table: Dict[str, Dict[str, float]]) -> str:
    """Per split (each split is one dataset) and pooled, with the clinical metric names; `@thr` is at the
    model's tuned threshold (chosen on validation), `@0.5` at 0.5; each with its 95% interval."""
    columns = (("examples", "example_count"), ("AUC", "auc"), ("acc@0.5", "binary_accuracy"),
               ("sens@0.5", "recall"), ("spec@0.5", "specificity"), ("acc@thr", "binary_accuracy@threshold"),
               ("sens@thr", "recall@threshold"), ("spec@thr", "specificity@threshold"))
    def columns_of(name):
        return {part.split("=")[0] for part in name.split(", ")}

    per_split = sorted(name for name in table if columns_of(name) == {"dataset", "split"})
    pooled = sorted(name for name in table if columns_of(name) == {"dataset"})
    labels = {name: name for name in per_split}
    labels.update({name: f"{name} (splits pooled)" for name in pooled})
    if "overall" in table:
        labels["overall"] = "all evaluated splits pooled"
    rows = [["slice"] + [title for title, _ in columns]]
    for name, label in labels.items():
        rows.append([label] + [format_count(table[name].get(key)) if key == "example_count"
                               else tfma_metrics.interval_cell(table[name], key) for title, key in columns])
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns) + 1)]
    return "\n".join((row[0].ljust(widths[0] + 2) + "".join(cell.rjust(w + 2) for cell, w in zip(row[1:], widths[1:])))
                     .rstrip() for row in rows)


def format_count(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"
