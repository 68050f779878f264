"""Reads what the latest pipeline run produced from ML Metadata, and its TFMA metrics."""
import dataclasses
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

import tensorflow_model_analysis as tfma
from google.protobuf import text_format
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from pipeline.evaluation import DECISION_OUTPUT, METRICS

AT_THRESHOLD_SUFFIX = "@threshold"


@dataclasses.dataclass
class RunOutputs:
    model: Optional[str] = None
    evaluation: Optional[str] = None
    blessed: Optional[bool] = None
    pushed: Optional[bool] = None
    pushed_destination: Optional[str] = None
    push_note: str = ""
    report: Optional[str] = None


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
        if kind == "Model":
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


def score_splits(examples_uri: str, splits: List[str], model_uri: str) -> Dict[str, Tuple[np.ndarray, np.ndarray,
                                                                                         List[str]]]:
    """{split: (labels, pneumonia probabilities, source paths)} over every example of each split, scored by the
    exported model's serving signature (loaded once)."""
    from components.report import executor

    serve = executor.serving_function(model_uri)
    scored = {}
    for split in splits:
        sample = executor.read_split(examples_uri, split, cap=10 ** 9)
        scored[split] = (np.array(sample.labels), executor.predict(serve, sample.serialized),
                         [source.split(":", 1)[1] for source in sample.sources])
    return scored


def slice_name(slice_key) -> str:
    parts = []
    for item in slice_key.single_slice_keys:
        value = item.bytes_value.decode() if item.HasField("bytes_value") else (
            item.int64_value if item.HasField("int64_value") else item.float_value)
        parts.append(f"{item.column}={value}")
    return ", ".join(parts) or "overall"


def slice_metrics(evaluation_uri: str) -> Dict[str, Dict[str, float]]:
    """{slice name: {metric key: value}} for the candidate model (baseline and diffs left out).

    Metrics of the `decision_score` output are those at the model's tuned threshold: `<key>@threshold`.
    """
    wanted = {key for _, key, _ in METRICS}
    table: Dict[str, Dict[str, float]] = {}
    for metrics in tfma.load_metrics(evaluation_uri):
        row = table.setdefault(slice_name(metrics.slice_key), {})
        for item in metrics.metric_keys_and_values:
            key = item.key
            if (key.name in wanted and not key.is_diff and key.model_name in ("", "candidate")
                    and item.value.HasField("double_value")):  # confusion matrices are structured values
                row[key.name + (AT_THRESHOLD_SUFFIX if key.output_name == DECISION_OUTPUT else "")] = (
                    item.value.double_value.value)
    return table


def validation_failures(evaluation_uri: str) -> List[str]:
    """Why the model was not blessed: one line per failed threshold."""
    failures = []
    for per_slice in tfma.load_validation_result(evaluation_uri).metric_validations_per_slice:
        for failure in per_slice.failures:
            key = failure.metric_key
            metric = f"{key.name} change vs baseline" if key.is_diff else key.name
            bound = text_format.MessageToString(failure.metric_threshold, as_one_line=True)
            failures.append(f"{slice_name(per_slice.slice_key)}: {metric} = "
                            f"{failure.metric_value.double_value.value:.4f} fails {bound} {failure.message}".rstrip())
    return failures


def format_table(table: Dict[str, Dict[str, float]]) -> str:
    """Per split (each split is one dataset) and pooled, with the clinical metric names; `@thr` is at the
    model's tuned threshold (chosen on validation), `@0.5` at 0.5."""
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
    width = max(len(label) for label in labels.values()) + 2
    lines = ["slice".ljust(width) + "".join(title.rjust(10) for title, _ in columns)]
    for name, label in labels.items():
        cells = []
        for title, key in columns:
            value = table[name].get(key)
            cells.append(("-" if value is None else f"{value:.0f}" if key == "example_count" else f"{value:.3f}")
                         .rjust(10))
        lines.append(label.ljust(width) + "".join(cells))
    return "\n".join(lines)
