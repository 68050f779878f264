"""`pneumonia report` and `pneumonia compare`: a run's HTML report again, and one table across architectures.

Both read ML Metadata: the report from the inputs the pipeline's EvaluationReport node recorded
(so it regenerates exactly that run's report, even when the node itself failed), the comparison
from every Evaluator execution and the architecture named in its model's threshold JSON.
"""
import argparse
import dataclasses
import json
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
from ml_metadata.proto import metadata_store_pb2

from pneumonia.tables import format_number, format_rows

# TensorFlow-heavy modules (results, the report executor) are imported where used: `pneumonia --help` stays fast.

REPORT_NODE = "EvaluationReport"
EVALUATOR_NODE = "Evaluator"
FINISHED = (metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED)
COMPARE_COLUMNS = (("examples", "example_count"), ("AUC", "auc"),
                   ("acc@thr", "binary_accuracy@threshold"), ("sens@thr", "recall@threshold"),
                   ("spec@thr", "specificity@threshold"), ("F1@thr", "f1_score@threshold"),
                   ("acc@0.5", "binary_accuracy"), ("sens@0.5", "recall"), ("spec@0.5", "specificity"),
                   ("F1@0.5", "f1_score"))
# `compare --into FILE [--section NAME]` rewrites only what lies between these lines.
GENERATED_BEGIN = "<!-- BEGIN pneumonia compare{section}: generated, do not edit -->"
GENERATED_END = "<!-- END pneumonia compare{section} -->"


class ReportLookupError(Exception):
    """The metadata store holds no run to report on or compare."""


def _artifacts_by_key(store, execution_id: int, event_types) -> Dict[str, metadata_store_pb2.Artifact]:
    """{input or output key: artifact} of one execution.

    One event lists every key an artifact fills (an Evaluator whose model is also its baseline records
    `baseline_model` and `model` in one path), so each keyed step counts.
    """
    events = [e for e in store.get_events_by_execution_ids([execution_id]) if e.type in event_types]
    artifacts = {a.id: a for a in store.get_artifacts_by_id([e.artifact_id for e in events])}
    return {step.key: artifacts[e.artifact_id] for e in events for step in e.path.steps if step.HasField("key")}


def _run_name(store, execution_id: int) -> str:
    runs = [c for c in store.get_contexts_by_execution(execution_id)
            if c.type_id == store.get_context_type("pipeline_run").id]
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
    from pneumonia import results

    if not os.path.exists(metadata_path):
        raise ReportLookupError(f"no ML Metadata at {metadata_path}: run the pipeline first (pneumonia run)")
    store = results.open_store(metadata_path)
    executions = results.node_executions(store, pipeline_name, REPORT_NODE)
    if run is not None:
        executions = [e for e in executions if _run_name(store, e.id) == run]
    if not executions:
        where = f"run {run!r}" if run else f"pipeline {pipeline_name!r}"
        raise ReportLookupError(f"{where} has no {REPORT_NODE} execution in {metadata_path}")
    execution = executions[-1]
    inputs = _artifacts_by_key(store, execution.id, (metadata_store_pb2.Event.INPUT,))
    missing = sorted({"examples", "model", "evaluation"} - set(inputs))
    if missing:
        raise ReportLookupError(f"{REPORT_NODE} execution {execution.id} recorded no {', '.join(missing)} input")
    return ReportInputs(
        run=_run_name(store, execution.id),
        examples=inputs["examples"].uri,
        split_names=json.loads(inputs["examples"].properties["split_names"].string_value),
        model=inputs["model"].uri,
        evaluation=inputs["evaluation"].uri,
        blessed=results.is_blessed(inputs.get("model_blessing")),
    )


def write_report(metadata_path: str, pipeline_name: str, out_dir: str, run: Optional[str] = None,
                 max_images: Optional[int] = None) -> str:
    """Regenerates a run's report into out_dir/<run>/ and returns the index.html path; `max_images` overrides
    how many images per split the curves and panels score."""
    from components.report import executor

    inputs = report_inputs(metadata_path, pipeline_name, run)
    from pipeline.config import BLESSING_SPLIT

    settings = executor.Settings(blessing_split=BLESSING_SPLIT,
                                 **({"max_images_per_split": max_images} if max_images else {}))
    return executor.generate(inputs.examples, inputs.split_names, inputs.model, inputs.evaluation,
                             os.path.join(out_dir, inputs.run.replace(os.sep, "_")), inputs.blessed, settings)


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
    import tensorflow as tf

    from components.report import attention

    consumers = sorted({e.execution_id for e in store.get_events_by_artifact_ids([model.id])
                        if e.type == metadata_store_pb2.Event.INPUT}, reverse=True)
    for execution_id in consumers:
        report = _artifacts_by_key(store, execution_id, (metadata_store_pb2.Event.OUTPUT,
                                                         metadata_store_pb2.Event.DECLARED_OUTPUT)).get("report")
        path = report and os.path.join(report.uri, attention.ATTENTION_FILE)
        if path and tf.io.gfile.exists(path):
            return attention.read(path)
    return {}


def _trainer_config(store, model: metadata_store_pb2.Artifact) -> dict:
    """The custom_config of the Trainer execution that produced `model` (through the ThresholdCalibrator, which
    re-exports the Trainer's model): the run's whole training recipe."""
    producers = [e.execution_id for e in store.get_events_by_artifact_ids([model.id])
                 if e.type in (metadata_store_pb2.Event.OUTPUT, metadata_store_pb2.Event.DECLARED_OUTPUT)]
    for execution in store.get_executions_by_id(producers):
        if "custom_config" in execution.custom_properties:
            return json.loads(execution.custom_properties["custom_config"].string_value or "{}") or {}
        inputs = _artifacts_by_key(store, execution.id, (metadata_store_pb2.Event.INPUT,))
        if "model" in inputs:
            return _trainer_config(store, inputs["model"])
    return {}


def latest_evaluations(metadata_path: str) -> List[Evaluated]:
    """The newest finished evaluation of each architecture, over every pipeline in the store."""
    from components.report import executor
    from pneumonia import results

    if not os.path.exists(metadata_path):
        raise ReportLookupError(f"no ML Metadata at {metadata_path}: run the pipeline first (pneumonia run)")
    store = results.open_store(metadata_path)
    nodes = [c for c in store.get_contexts_by_type("node") if c.name.endswith(f".{EVALUATOR_NODE}")]
    executions = sorted((e for node in nodes for e in store.get_executions_by_context(node.id)
                         if e.last_known_state in FINISHED), key=lambda e: e.id)
    latest: Dict[str, Evaluated] = {}
    models: Dict[str, metadata_store_pb2.Artifact] = {}
    for execution in executions:
        inputs = _artifacts_by_key(store, execution.id, (metadata_store_pb2.Event.INPUT,))
        outputs = _artifacts_by_key(store, execution.id, (metadata_store_pb2.Event.OUTPUT,
                                                          metadata_store_pb2.Event.DECLARED_OUTPUT))
        if "model" not in inputs or "examples" not in inputs or "evaluation" not in outputs:
            continue
        info = executor.model_info(inputs["model"].uri)
        latest[info["architecture"]] = Evaluated(info["architecture"], int(info["image_size"]),
                                                 results.is_blessed(outputs.get("blessing")),
                                                 outputs["evaluation"].uri, info,
                                                 _trainer_config(store, inputs["model"]), inputs["model"].uri,
                                                 inputs["examples"].uri)
        models[info["architecture"]] = inputs["model"]
    if not latest:
        raise ReportLookupError(f"no finished {EVALUATOR_NODE} execution in {metadata_path}")
    return [dataclasses.replace(latest[name], attention=_report_attention(store, models[name]))
            for name in sorted(latest)]


def reported_slices(table: Dict[str, Dict[str, float]]) -> List[Tuple[str, str]]:
    """(TFMA slice name, shown name): each whole split, then each source of a split that pools several
    (the external set: rsna and ieee8023), in split order."""
    from components.report.executor import slice_parts, ordered_splits
    from pipeline.config import BLESSING_SPLIT

    splits = {slice_parts(name)["split"]: name for name in table if set(slice_parts(name)) == {"dataset", "split"}}
    sources: Dict[str, Dict[str, str]] = {}
    for name in table:
        parts = slice_parts(name)
        if set(parts) == {"source", "split"}:
            sources.setdefault(parts["split"], {})[parts["source"]] = name
    chosen = []
    for split in ordered_splits(list(splits), BLESSING_SPLIT):
        chosen.append((splits[split], split))
        if len(sources.get(split, {})) > 1:
            chosen += [(name, f"{split}: {source}") for source, name in sorted(sources[split].items())]
    return chosen


def model_rows(evaluated: List[Evaluated]) -> List[List[str]]:
    """Header plus one row per architecture: how it was trained, what it cost, the threshold it chose."""
    header = ["architecture", "size", "weights", "label smoothing", "best epoch by", "best val value", "parameters",
              "best epoch / run", "train min", "train img/s", "threshold (policy)", "val sens@thr", "val spec@thr",
              "blessed"]
    rows = [header]
    for item in evaluated:
        training, model = item.model.get("training", {}), item.model
        epochs = (f"{training['best_epoch']} / {training['epochs_run']}" if "epochs_run" in training else "-")
        minutes = training.get("train_seconds")
        rows.append([item.architecture, str(item.image_size), str(item.recipe.get("weights", "-")),
                     str(item.recipe.get("label_smoothing", "-")), str(item.recipe.get("early_stopping_metric", "-")),
                     format_number(training.get("best_validation_value"), 4),
                     f"{training['parameters']:,}" if "parameters" in training else "-", epochs,
                     format_number(minutes / 60 if minutes is not None else None, 1),
                     format_number(training.get("train_images_per_second"), 1),
                     f"{format_number(model.get('value'))} ({model.get('policy', '-')})",
                     format_number(model.get("sensitivity")), format_number(model.get("specificity")), str(item.blessed)])
    return rows


def compare_rows(evaluated: List[Evaluated]) -> List[List[str]]:
    """Header plus one row per architecture and reported slice (whole splits, and sources within them)."""
    from components.report import tfma_metrics
    from components.report.executor import undefined_metrics
    from pneumonia import results

    header = ["architecture", "slice"] + [title for title, _ in COMPARE_COLUMNS]
    rows = [header]
    for item in evaluated:
        table = results.slice_metrics(item.evaluation)
        for name, shown in reported_slices(table):
            row = table[name]
            undefined = undefined_metrics(row)  # e.g. AUC of the all-NORMAL RSNA images: TFMA says 0
            cells = [format_number(row.get(key), 0) if key == "example_count" else
                     "-" if key in undefined else
                     tfma_metrics.interval_cell(row, key) if key.split("@")[0] in tfma_metrics.INTERVAL_CASES else
                     format_number(row.get(key)) for _, key in COMPARE_COLUMNS]
            rows.append([item.architecture, shown] + cells)
    return rows


def attention_rows(evaluated: List[Evaluated]) -> List[List[str]]:
    """Header plus one row per architecture and split its report explained: the mean Grad-CAM border share per
    outcome at the tuned threshold (components/report/attention.py; 0.4375 is an even map), images in brackets."""
    from components.report import attention

    header = ["architecture", "split"] + [f"border share {name}" for name in attention.columns()]
    rows = [header]
    for item in evaluated:
        for split, outcomes in item.attention.items():
            rows.append([item.architecture, split] + [f"{format_number(outcomes[name].mean)} ({outcomes[name].images})"
                                                      for name in attention.columns()])
    if len(rows) == 1:
        rows.append(["-", "no report with border attention under this root"] + ["-"] * len(attention.columns()))
    return rows


def ood_rows(evaluated: List[Evaluated]) -> List[List[str]]:
    """Header plus one row per architecture and split: the share of images the model's OOD guard flags, and the
    model's error rate at its threshold among the flagged and the other images (scores every example again)."""
    from pipeline.config import BLESSING_SPLIT
    from pneumonia import results

    splits = ["train", BLESSING_SPLIT, "test", "external"]
    header = ["architecture", "split", "images", "flagged OOD", "error rate flagged", "error rate not flagged"]
    rows = [header]
    for item in evaluated:
        for split, (sample, outputs) in results.scored_outputs(item.examples_uri, splits, item.model_uri).items():
            labels = np.array(sample.labels)
            if "in_distribution" not in outputs:
                rows.append([item.architecture, split, str(labels.size), "no guard", "-", "-"])
                continue
            flagged = ~outputs["in_distribution"]
            wrong = (outputs["probability"] >= outputs["threshold"]) != (labels == 1)
            rows.append([item.architecture, split, str(labels.size), format_number(flagged.mean()),
                         format_number(wrong[flagged].mean() if flagged.any() else None),
                         format_number(wrong[~flagged].mean() if (~flagged).any() else None)])
    return rows


def compare(metadata_path: str, markdown: bool = False, policies: bool = False, kshot: bool = False,
            ood: bool = False) -> str:
    """Tables over the latest evaluation of every architecture: how each model was trained (cost, threshold
    chosen on validation), its metrics per split at the tuned threshold and at 0.5, (`policies`) what
    each threshold policy would have given and (`ood`) the share of each split its OOD guard flags; `kshot`
    prints instead the one table of what calibrating on k labelled test or external images gives on the
    rest. `policies`, `ood` and `kshot` score every model again."""
    evaluated = latest_evaluations(metadata_path)
    if kshot:
        from pneumonia.kshot import kshot_rows

        return "\n\n".join(format_rows(rows, markdown, label_columns=columns)
                           for rows, columns in zip(kshot_rows(evaluated), (3, 2)))
    tables = [format_rows(model_rows(evaluated), markdown, label_columns=1),
              format_rows(compare_rows(evaluated), markdown), format_rows(attention_rows(evaluated), markdown)]
    if policies:
        from pneumonia.policies import policy_rows

        tables.append(format_rows(policy_rows(evaluated), markdown))
    if ood:
        tables.append(format_rows(ood_rows(evaluated), markdown))
    return "\n\n".join(tables)


def generated_markers(section: str = "") -> Tuple[str, str]:
    suffix = f" {section}" if section else ""
    return GENERATED_BEGIN.format(section=suffix), GENERATED_END.format(section=suffix)


def replace_generated(path: str, text: str, section: str = "") -> None:
    """Puts `text` between the file's BEGIN/END markers (of `section`, when a file has several), keeping
    everything written around them."""
    with open(path, encoding="utf-8") as f:
        document = f.read()
    begin_marker, end_marker = generated_markers(section)
    begin, end = document.find(begin_marker), document.find(end_marker)
    if begin < 0 or end < begin:
        raise ReportLookupError(f"{path} has no {begin_marker} ... {end_marker} section to fill")
    document = document[:begin + len(begin_marker)] + "\n" + text + "\n" + document[end:]
    with open(path, "w", encoding="utf-8") as f:
        f.write(document)


def cmd_report(args: argparse.Namespace) -> None:
    from pipeline.config import RunConfig

    config = RunConfig(root=args.root) if args.root else RunConfig()
    out = os.path.abspath(args.out) if args.out else os.path.join(config.root, "reports")
    try:
        print(write_report(config.metadata_path, args.pipeline_name or config.pipeline_name, out, args.run,
                           args.max_images))
    except ReportLookupError as error:
        raise SystemExit(f"error: {error}")


def cmd_compare(args: argparse.Namespace) -> None:
    from pipeline.config import RunConfig

    config = RunConfig(root=args.root) if args.root else RunConfig()
    markdown = args.markdown or bool(args.into)
    try:
        if args.ablation or args.targets:
            _print_or_fill(format_rows(_lungs_rows(args, config.metadata_path), markdown), args.into, args.section)
        else:
            _print_or_fill(compare(config.metadata_path, markdown=markdown, policies=args.policies, kshot=args.kshot,
                                   ood=args.ood), args.into, args.section)
    except (ReportLookupError, OSError, ValueError) as error:
        raise SystemExit(f"error: {error}")


def _lungs_rows(args: argparse.Namespace, metadata_path: str) -> List[List[str]]:
    """Issue 12's ablation table (`--ablation`), or the targets table of the model the rule picks (`--targets`)."""
    from pneumonia import ablation

    if args.ablation:
        return ablation.ablation_rows(ablation.labelled_roots(args.ablation))
    if not args.baseline:
        raise ValueError("--targets needs --baseline LABEL=ROOT[:ARCHITECTURE]: the recipe whose false positives "
                         "the border target compares on")
    return ablation.target_rows(latest_evaluations(metadata_path), ablation.labelled_roots([args.baseline])[0][1])


def errors_report(metadata_path: str, split: str, architecture: Optional[str], top: int,
                  markdown: bool) -> str:
    """Per architecture (its latest evaluated model): error rates by file-name family on `split` at the model's
    own threshold, then its most confident mistakes."""
    from pneumonia import errors, results

    evaluated = [item for item in latest_evaluations(metadata_path)
                 if architecture in (None, item.architecture)]
    if not evaluated:
        raise ReportLookupError(f"no evaluated {architecture} model in {metadata_path}")
    parts = []
    for item in evaluated:
        value = float(item.model["value"])
        labels, probabilities, paths = results.score_splits(item.examples_uri, [split], item.model_uri)[split]
        title = f"{item.architecture} on {split}, at its threshold {value:.3f}"
        parts += [f"**{title}**" if markdown else title,
                  format_rows(errors.family_rows(labels, probabilities, paths, value), markdown),
                  format_rows(errors.worst_rows(labels, probabilities, paths, value, top), markdown)]
    return "\n\n".join(parts)


def _print_or_fill(text: str, into: Optional[str], section: str) -> None:
    if into:
        replace_generated(into, text, section)
        print(f"updated {into}")
    else:
        print(text)


def cmd_errors(args: argparse.Namespace) -> None:
    from pipeline.config import RunConfig

    config = RunConfig(root=args.root) if args.root else RunConfig()
    try:
        _print_or_fill(errors_report(config.metadata_path, args.split, args.architecture, args.top,
                                     args.markdown or bool(args.into)), args.into, args.section)
    except (ReportLookupError, OSError, ValueError) as error:
        raise SystemExit(f"error: {error}")


def _add_into(parser, default_section: str = "") -> None:
    parser.add_argument("--into", metavar="FILE",
                        help="write Markdown into FILE between its generated-section markers (e.g. "
                             "docs/RESULTS.md), leaving the rest of FILE as it is")
    parser.add_argument("--section", default=default_section,
                        help=f"with --into: the markers' name (default {default_section or 'none'})")


def add_commands(commands) -> None:
    """`report`, `compare` and `errors` subcommands on the `pneumonia` CLI's subparsers."""
    report = commands.add_parser("report", help="regenerate the HTML evaluation report of a run",
                                 description="Regenerate the evaluation report (figures, per-slice metrics, "
                                             "Grad-CAM, model card) of the latest run, or of --run, and print "
                                             "the path of its index.html.")
    report.add_argument("--root", help="run root (default ~/pneumonia-runs)")
    report.add_argument("--out", help="where reports go, one folder per run (default <root>/reports)")
    report.add_argument("--run", help="pipeline run id (default: the latest run)")
    report.add_argument("--pipeline-name", help="pipeline name (default pneumonia)")
    report.add_argument("--max-images", type=int, metavar="N",
                        help="images scored per split for the curves and Grad-CAM panels (default 200; "
                             "larger covers whole splits)")
    report.set_defaults(func=cmd_report)

    comparison = commands.add_parser("compare", help="compare the latest evaluation of every architecture",
                                     description="Print two tables: per architecture run under --root, how its "
                                                 "latest evaluated model was trained (cost, threshold chosen on "
                                                 "validation), then its TFMA metrics per split and per source "
                                                 "(at the tuned threshold and at 0.5).")
    comparison.add_argument("--root", help="run root (default ~/pneumonia-runs)")
    comparison.add_argument("--markdown", action="store_true", help="print Markdown tables")
    comparison.add_argument("--policies", action="store_true",
                            help="add the threshold-policy table: every policy chosen on validation, applied to "
                                 "test and external (scores each model again: a minute or more per model)")
    comparison.add_argument("--kshot", action="store_true",
                            help="print only the k-shot calibration table: each model's threshold chosen on k = 20, 50, 100 "
                                 "labelled test and external images (20 seeded patient-grouped draws), evaluated on "
                                 "the rest, next to its validation threshold (scores each model again)")
    comparison.add_argument("--ood", action="store_true",
                            help="add the out-of-distribution table: per split, the share of images each model's "
                                 "guard flags and its error rate among flagged and other images (scores each "
                                 "model again)")
    comparison.add_argument("--ablation", action="append", metavar="LABEL=ROOT[:ARCHITECTURE]",
                            help="print only the ablation table, one row per run root (repeatable, in row order; "
                                 "the first is the baseline, whose test false positives every row is explained on "
                                 "again for the border-share column)")
    comparison.add_argument("--targets", action="store_true",
                            help="print only issue 12's targets table: the model under --root that the written rule "
                                 "picks (lowest validation Brier; within 0.002, lower validation border share), "
                                 "against each target")
    comparison.add_argument("--baseline", metavar="LABEL=ROOT[:ARCHITECTURE]",
                            help="with --targets: the recipe the border target compares against")
    _add_into(comparison)
    comparison.set_defaults(func=cmd_compare)

    mistakes = commands.add_parser("errors", help="a model's mistakes at its threshold, by file-name family",
                                   description="Score a split with the latest evaluated model of each architecture "
                                               "(or --architecture) and print its error rate per file-name family "
                                               "(NORMAL#-IM, IM, person#_virus, rsna_Normal, ...) and class at "
                                               "the model's own threshold, then its most confident mistakes.")
    mistakes.add_argument("--root", help="run root (default ~/pneumonia-runs)")
    mistakes.add_argument("--architecture", help="only this architecture")
    mistakes.add_argument("--split", default="test", help="split to analyse (default test)")
    mistakes.add_argument("--top", type=int, default=10, help="most confident mistakes listed (default 10)")
    mistakes.add_argument("--markdown", action="store_true", help="print Markdown tables")
    _add_into(mistakes, default_section="errors")
    mistakes.set_defaults(func=cmd_errors)
