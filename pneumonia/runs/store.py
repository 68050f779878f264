"""The run store: what pipeline runs produced, read back from ML Metadata.

Every reader opens the store read-only, so a running pipeline is never disturbed: the latest run's outputs
(what `pneumonia run` prints), the inputs a run's EvaluationReport node recorded (so `pneumonia report`
regenerates exactly that run's report), and the newest evaluation of each architecture (what `compare` and
the ensemble read).
"""

import dataclasses
import json
import os
from typing import Dict, List, Optional

import tensorflow as tf
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

from components.report import attention, scoring

REPORT_NODE = "EvaluationReport"
EVALUATOR_NODE = "Evaluator"
FINISHED = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)


class RunLookupError(Exception):
    """The metadata store holds no run to report on or compare."""


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
    return (
        f"threshold {props['old_threshold'].double_value:.4f} -> {props['new_threshold'].double_value:.4f} "
        f"(bootstrap 95% interval [{props['threshold_lower'].double_value:.4f}, "
        f"{props['threshold_upper'].double_value:.4f}]) on {props['calibration_normal'].int_value} NORMAL / "
        f"{props['calibration_pneumonia'].int_value} PNEUMONIA calibration images"
    )


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
    output_ids = [
        e.artifact_id
        for e in events
        if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    ]
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


def artifacts_by_key(store, execution_id: int, event_types) -> Dict[str, metadata_store_pb2.Artifact]:
    """{input or output key: artifact} of one execution.

    One event lists every key an artifact fills (an Evaluator whose model is also its baseline records
    `baseline_model` and `model` in one path), so each keyed step counts.
    """
    events = [e for e in store.get_events_by_execution_ids([execution_id]) if e.type in event_types]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    return {step.key: artifacts[e.artifact_id] for e in events for step in e.path.steps if step.HasField("key")}


def _run_name(store, execution_id: int) -> str:
    runs = [
        c
        for c in store.get_contexts_by_execution(execution_id)
        if c.type_id == store.get_context_type("pipeline_run").id
    ]
    return runs[0].name if runs else str(execution_id)


@dataclasses.dataclass(frozen=True)
class ReportInputs:
    run: str
    examples: str
    split_names: List[str]
    model: str
    evaluation: str
    blessed: Optional[bool]


def report_inputs(metadata_path: str, pipeline_name: str, run: Optional[str] = None) -> ReportInputs:
    """What the EvaluationReport node of the latest run (or the run named `run`) read."""
    if not os.path.exists(metadata_path):
        raise RunLookupError(f"no ML Metadata at {metadata_path}: run the pipeline first (pneumonia run)")
    store = open_store(metadata_path)
    executions = node_executions(store, pipeline_name, REPORT_NODE)
    if run is not None:
        executions = [e for e in executions if _run_name(store, e.id) == run]
    if not executions:
        where = f"run {run!r}" if run else f"pipeline {pipeline_name!r}"
        raise RunLookupError(f"{where} has no {REPORT_NODE} execution in {metadata_path}")
    execution = executions[-1]
    inputs = artifacts_by_key(store, execution.id, (metadata_store_pb2.Event.INPUT,))
    missing = sorted({"examples", "model", "evaluation"} - set(inputs))
    if missing:
        raise RunLookupError(f"{REPORT_NODE} execution {execution.id} recorded no {', '.join(missing)} input")
    return ReportInputs(
        run=_run_name(store, execution.id),
        examples=inputs["examples"].uri,
        split_names=json.loads(inputs["examples"].properties["split_names"].string_value),
        model=inputs["model"].uri,
        evaluation=inputs["evaluation"].uri,
        blessed=is_blessed(inputs.get("model_blessing")),
    )


@dataclasses.dataclass(frozen=True)
class Evaluated:
    architecture: str
    image_size: int
    blessed: Optional[bool]
    evaluation: str
    model: dict  # the export's threshold JSON: threshold, policy, validation figures, training cost
    recipe: dict  # the producing Trainer's custom_config (empty when the store does not record it)
    model_uri: str
    examples_uri: str  # what the Evaluator read
    attention: dict = dataclasses.field(default_factory=dict)  # the report's border attention: split -> outcome


def _report_attention(store, model: metadata_store_pb2.Artifact) -> dict:
    """The border-attention table that the newest report made from `model` wrote ({} when none did)."""
    consumers = sorted(
        {
            e.execution_id
            for e in store.get_events_by_artifact_ids([model.id])
            if e.type == metadata_store_pb2.Event.INPUT
        },
        reverse=True,
    )
    for execution_id in consumers:
        report = artifacts_by_key(
            store, execution_id, (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
        ).get("report")
        path = report and os.path.join(report.uri, attention.ATTENTION_FILE)
        if path and tf.io.gfile.exists(path):
            return attention.read(path)
    return {}


def _trainer_config(store, model: metadata_store_pb2.Artifact) -> dict:
    """The custom_config of the Trainer execution that produced `model` (through the ThresholdCalibrator, which
    re-exports the Trainer's model): the run's whole training recipe."""
    producers = [
        e.execution_id
        for e in store.get_events_by_artifact_ids([model.id])
        if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
    ]
    for execution in store.get_executions_by_id(producers):
        if "custom_config" in execution.custom_properties:
            return json.loads(execution.custom_properties["custom_config"].string_value or "{}") or {}
        inputs = artifacts_by_key(store, execution.id, (metadata_store_pb2.Event.INPUT,))
        if "model" in inputs:
            return _trainer_config(store, inputs["model"])
    return {}


def latest_evaluations(metadata_path: str) -> List[Evaluated]:
    """The newest finished evaluation of each architecture, over every pipeline in the store."""
    if not os.path.exists(metadata_path):
        raise RunLookupError(f"no ML Metadata at {metadata_path}: run the pipeline first (pneumonia run)")
    store = open_store(metadata_path)
    nodes = [c for c in store.get_contexts_by_type("node") if c.name.endswith(f".{EVALUATOR_NODE}")]
    executions = sorted(
        (e for node in nodes for e in store.get_executions_by_context(node.id) if e.last_known_state in FINISHED),
        key=lambda e: e.id,
    )
    latest: Dict[str, Evaluated] = {}
    models: Dict[str, metadata_store_pb2.Artifact] = {}
    for execution in executions:
        inputs = artifacts_by_key(store, execution.id, (metadata_store_pb2.Event.INPUT,))
        outputs = artifacts_by_key(
            store, execution.id, (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)
        )
        if "model" not in inputs or "examples" not in inputs or "evaluation" not in outputs:
            continue
        info = scoring.model_info(inputs["model"].uri)
        latest[info["architecture"]] = Evaluated(
            info["architecture"],
            int(info["image_size"]),
            is_blessed(outputs.get("blessing")),
            outputs["evaluation"].uri,
            info,
            _trainer_config(store, inputs["model"]),
            inputs["model"].uri,
            inputs["examples"].uri,
        )
        models[info["architecture"]] = inputs["model"]
    if not latest:
        raise RunLookupError(f"no finished {EVALUATOR_NODE} execution in {metadata_path}")
    return [
        dataclasses.replace(latest[name], attention=_report_attention(store, models[name])) for name in sorted(latest)
    ]
