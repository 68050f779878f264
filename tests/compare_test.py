"""`pneumonia compare`: the latest evaluation of every architecture, read from ML Metadata, in one table."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tensorflow_model_analysis.proto import metrics_for_slice_pb2

from pneumonia import cli
from pneumonia.analysis import compare as compare_lib
from pneumonia.analysis import generated, policies
from pneumonia.runs import scoring
from pneumonia.runs import store as run_store
from serving.repository import THRESHOLD_ASSET

ARTIFACT_TYPES = ("Examples", "Model", "ModelEvaluation", "ModelBlessing", "File")


class Metadata:
    """Writes executions, artifacts and events into an ML Metadata SQLite store the way TFX records them."""

    def __init__(self, path: str):
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = path
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        self.store = metadata_store.MetadataStore(config)
        self.types = {}
        for name in ARTIFACT_TYPES:
            kind = metadata_store_pb2.ArtifactType(name=name)
            if name == "Examples":
                kind.properties["split_names"] = metadata_store_pb2.STRING
            self.types[name] = self.store.put_artifact_type(kind)
        for name in ("pipeline", "pipeline_run", "node"):
            self.types[name] = self.store.put_context_type(metadata_store_pb2.ContextType(name=name))
        self.contexts = {}

    def _context(self, kind: str, name: str) -> int:
        if (kind, name) not in self.contexts:
            [self.contexts[(kind, name)]] = self.store.put_contexts(
                [metadata_store_pb2.Context(type_id=self.types[kind], name=name)]
            )
        return self.contexts[(kind, name)]

    def artifact(self, kind: str, uri: str, split_names=None, blessed=None) -> metadata_store_pb2.Artifact:
        artifact = metadata_store_pb2.Artifact(type_id=self.types[kind], uri=uri)
        if split_names is not None:
            artifact.properties["split_names"].string_value = json.dumps(split_names)
        if blessed is not None:
            artifact.custom_properties["blessed"].int_value = int(blessed)
        return artifact

    def execution(
        self,
        pipeline: str,
        run: str,
        node: str,
        inputs: dict,
        outputs: dict,
        state=metadata_store_pb2.Execution.COMPLETE,
        custom_config=None,
    ) -> None:
        kind = self.types.setdefault(node, self.store.put_execution_type(metadata_store_pb2.ExecutionType(name=node)))
        events = []
        for event_type, artifacts in (
            (metadata_store_pb2.Event.INPUT, inputs),
            (metadata_store_pb2.Event.OUTPUT, outputs),
        ):
            for keys, artifact in artifacts.items():
                event = metadata_store_pb2.Event(type=event_type)
                for key in keys.split(","):  # "baseline_model,model": one artifact in two inputs, one event
                    event.path.steps.add().key = key
                    event.path.steps.add().index = 0
                events.append((artifact, event))
        contexts = [
            metadata_store_pb2.Context(id=self._context(kind, name), type_id=self.types[kind], name=name)
            for kind, name in (("pipeline", pipeline), ("pipeline_run", run), ("node", f"{pipeline}.{node}"))
        ]
        execution = metadata_store_pb2.Execution(type_id=kind, last_known_state=state)
        if custom_config is not None:  # as TFX records a Trainer's custom_config
            execution.custom_properties["custom_config"].string_value = json.dumps(custom_config)
        self.store.put_execution(execution, events, contexts)


TRAINING = {
    "best_validation_value": 0.25123,
    "best_epoch": 3,
    "epochs_run": 7,
    "train_seconds": 630.0,
    "train_images_per_second": 44.4,
    "parameters": 1234567,
}


def model_folder(root: str, name: str, architecture: str, image_size: int = 64) -> str:
    """A model artifact folder holding only what compare reads: the export's threshold JSON."""
    assets = os.path.join(root, name, "Format-Serving", "assets")
    os.makedirs(assets)
    with open(os.path.join(assets, THRESHOLD_ASSET), "w", encoding="utf-8") as f:
        json.dump(
            {
                "value": 0.25,
                "policy": "sensitivity:0.98",
                "sensitivity": 0.98,
                "specificity": 0.9,
                "architecture": architecture,
                "image_size": image_size,
                "training": TRAINING,
            },
            f,
        )
    return os.path.join(root, name)


def evaluation_folder(root: str, name: str, per_slice: dict) -> str:
    """TFMA metrics output ({slice: {metric: value}}, slices as 'dataset=..., split=...')."""
    folder = os.path.join(root, name)
    os.makedirs(folder)
    with tf.io.TFRecordWriter(os.path.join(folder, "metrics")) as writer:
        for slice_text, metrics in per_slice.items():
            record = metrics_for_slice_pb2.MetricsForSlice()
            for part in slice_text.split(", "):
                column, value = part.split("=")
                record.slice_key.single_slice_keys.add(column=column, bytes_value=value.encode())
            for metric, value in metrics.items():
                item = record.metric_keys_and_values.add()
                item.key.name, at_threshold, _ = metric.partition("@threshold")
                item.key.output_name = "decision_score" if at_threshold else "probability"
                item.value.double_value.value = value
            writer.write(record.SerializeToString())
    return folder


def split_metrics(auc: float) -> dict:
    return {
        "example_count": 100,
        "auc": auc,
        "binary_accuracy": 0.8,
        "precision": 0.75,
        "recall": 0.6,
        "specificity": 0.9,
        "f1_score": 0.667,
        "recall@threshold": 0.95,
        "specificity@threshold": 0.7,
        "f1_score@threshold": 0.8,
    }


@pytest.fixture
def runs(tmp_path):
    """cnn evaluated twice (the second is the latest), densenet121 once, a failed cnn evaluation last; each
    evaluation has whole-split slices plus a label crossing and a split-only slice that the table leaves out."""
    root = str(tmp_path)
    metadata = Metadata(os.path.join(root, "metadata.sqlite"))
    plan = [
        ("run-1", "cnn", 0.70, metadata_store_pb2.Execution.COMPLETE),
        ("run-2", "densenet121", 0.85, metadata_store_pb2.Execution.COMPLETE),
        ("run-3", "cnn", 0.90, metadata_store_pb2.Execution.CACHED),
        ("run-4", "cnn", 0.10, metadata_store_pb2.Execution.FAILED),
    ]
    for run, architecture, auc, state in plan:
        model = metadata.artifact("Model", model_folder(root, f"model-{run}", architecture))
        [model.id] = metadata.store.put_artifacts([model])  # one artifact: the Trainer's output, the Evaluator's input
        metadata.execution(
            "pneumonia",
            run,
            "Trainer",
            {},
            {"model": model},
            custom_config={"weights": "none", "label_smoothing": 0.1, "early_stopping_metric": "loss"},
        )
        evaluation = metadata.artifact(
            "ModelEvaluation",
            evaluation_folder(
                root,
                f"evaluation-{run}",
                {
                    "dataset=kermany, split=test": split_metrics(auc),
                    "dataset=external, split=external": split_metrics(0.6),
                    "dataset=kermany, label=0, split=test": split_metrics(0.0),
                    "split=test": split_metrics(auc),
                    "source=kermany, split=test": split_metrics(auc),
                    "source=rsna, split=external": {**split_metrics(0.5), "recall": float("nan")},
                    "source=ieee8023, split=external": split_metrics(0.7),
                },
            ),
        )
        # From the second run on, the model under evaluation can be its own baseline (a cached Trainer).
        inputs = {"model": model} if run == "run-1" else {"baseline_model,model": model}
        inputs["examples"] = metadata.artifact("Examples", os.path.join(root, "examples"), split_names=["test"])
        metadata.execution(
            "pneumonia",
            run,
            "Evaluator",
            inputs,
            {"evaluation": evaluation, "blessing": metadata.artifact("ModelBlessing", "", blessed=True)},
            state,
        )
    return root


def test_table_lists_the_latest_finished_evaluation_of_each_architecture(runs):
    rows = compare_lib.compare_rows(run_store.latest_evaluations(os.path.join(runs, "metadata.sqlite")))
    assert rows[0][:2] == ["architecture", "slice"]
    # Whole splits in split order, then the sources of the split that pools several; test has only one.
    assert [row[1] for row in rows[1:] if row[0] == "cnn"] == [
        "test",
        "external",
        "external: ieee8023",
        "external: rsna",
    ]
    by_key = {(row[0], row[1]): dict(zip(rows[0], row)) for row in rows[1:]}
    assert by_key[("cnn", "test")]["AUC"] == "0.900"  # not the failed or the older run
    assert by_key[("densenet121", "test")]["AUC"] == "0.850"
    rsna = by_key[("cnn", "external: rsna")]  # NORMAL only: AUC and F1 are undefined, specificity is not
    assert (rsna["AUC"], rsna["F1@0.5"], rsna["F1@thr"], rsna["sens@0.5"], rsna["spec@0.5"]) == (
        "-",
        "-",
        "-",
        "-",
        "0.900",
    )
    cnn = by_key[("cnn", "test")]
    assert cnn["F1@0.5"] == "0.667" and cnn["examples"] == "100"
    assert (cnn["sens@thr"], cnn["spec@thr"], cnn["F1@thr"]) == ("0.950", "0.700", "0.800")


def test_model_table_shows_the_recipe_cost_and_threshold(runs):
    rows = compare_lib.model_rows(run_store.latest_evaluations(os.path.join(runs, "metadata.sqlite")))
    cnn = dict(zip(rows[0], rows[1]))
    assert [row[0] for row in rows[1:]] == ["cnn", "densenet121"]
    assert cnn["weights"] == "none" and cnn["parameters"] == "1,234,567" and cnn["best epoch / run"] == "3 / 7"
    assert (cnn["label smoothing"], cnn["best epoch by"], cnn["best val value"]) == ("0.1", "loss", "0.2512")
    assert (cnn["train min"], cnn["train img/s"]) == ("10.5", "44.4")
    assert cnn["threshold (policy)"] == "0.250 (sensitivity:0.98)" and cnn["blessed"] == "True"


def test_cli_prints_plain_and_markdown_tables(runs, capsys):
    cli.main(["compare", "--root", runs])
    plain = capsys.readouterr().out.splitlines()
    assert plain[0].split()[:2] == ["architecture", "size"] and plain.index("") == 3  # header + 2 models
    assert plain[4].split()[:2] == ["architecture", "slice"] and plain.index("", 4) == 4 + 9  # header + 8 slices
    # these runs have no report: the border-attention table says so instead of showing nothing
    assert plain[14].split()[:3] == ["architecture", "split", "border"] and "no report" in plain[15]
    assert len(plain) == 16
    cli.main(["compare", "--root", runs, "--markdown"])
    markdown = capsys.readouterr().out.splitlines()
    assert markdown[0].startswith("| architecture |") and set(markdown[1]) <= {"|", "-"}
    assert sum(line.startswith("| cnn |") for line in markdown) == 1 + 4


def test_into_rewrites_only_the_generated_section(runs, tmp_path):
    document = tmp_path / "RESULTS.md"
    begin, end = generated.generated_markers()
    other_begin, other_end = generated.generated_markers("ablation")
    before, after = "# Results\n\nwritten by hand\n", f"\n## Ablation\n{other_begin}\nkept\n{other_end}\n"
    document.write_text(f"{before}{begin}\nstale\n{end}{after}")
    cli.main(["compare", "--root", runs, "--into", str(document)])
    text = document.read_text()
    assert text.startswith(before) and text.endswith(end + after) and "stale" not in text
    assert "| cnn | test |" in text
    cli.main(["compare", "--root", runs, "--into", str(document), "--section", "ablation"])
    assert "kept" not in document.read_text() and document.read_text().count("| cnn | test |") == 2
    document.write_text("no markers")
    with pytest.raises(SystemExit, match="no .*BEGIN pneumonia compare.* section"):
        cli.main(["compare", "--root", runs, "--into", str(document)])


def test_a_root_without_evaluations_is_a_one_line_error(tmp_path):
    Metadata(str(tmp_path / "metadata.sqlite"))
    with pytest.raises(SystemExit, match="no finished Evaluator execution"):
        cli.main(["compare", "--root", str(tmp_path)])
    with pytest.raises(SystemExit, match="no ML Metadata at"):
        cli.main(["compare", "--root", str(tmp_path / "elsewhere")])


def test_policy_table_applies_each_validation_threshold_to_the_reported_splits(runs, monkeypatch):
    # Validation separates perfectly; test NORMAL images score higher than validation's (the shift).
    scores = {
        "eval": ([0, 0, 0, 0, 1, 1, 1, 1], [0.05, 0.1, 0.15, 0.2, 0.6, 0.8, 0.9, 0.95]),
        "test": ([0, 0, 0, 0, 1, 1, 1, 1], [0.1, 0.3, 0.5, 0.7, 0.55, 0.8, 0.9, 0.95]),
        "external": ([1, 1], [0.4, 0.9]),
    }
    monkeypatch.setattr(
        scoring,
        "score_splits",
        lambda examples, splits, model: {
            split: (np.array(scores[split][0]), np.array(scores[split][1]), []) for split in splits
        },
    )
    evaluated = run_store.latest_evaluations(os.path.join(runs, "metadata.sqlite"))
    rows = policies.policy_rows(evaluated[:1])
    table = {row[1]: dict(zip(rows[0], row)) for row in rows[1:]}
    assert list(table) == [
        "youden",
        "sensitivity:0.95",
        "**sensitivity:0.98** (recipe)",
        "sensitivity:0.99",
        "median-midpoint",
        "fixed:0.5",
    ]
    youden = table["youden"]  # the lowest PNEUMONIA validation score
    assert (youden["threshold"], youden["val sens"], youden["val spec"]) == ("0.600", "1.000", "1.000")
    assert (youden["test acc"], youden["test sens"], youden["test spec"]) == ("0.750", "0.750", "0.750")
    assert (table["fixed:0.5"]["test sens"], table["fixed:0.5"]["test spec"]) == ("1.000", "0.500")
    assert (table["fixed:0.5"]["external sens"], table["fixed:0.5"]["external spec"]) == ("0.500", "-")


def test_ood_table_gives_the_flagged_share_and_error_rates_per_split(runs, monkeypatch, capsys):
    from components.report.scoring import SplitSample

    def scored_outputs(examples, splits, model):
        # external: 2 of 4 flagged, one of them a mistake, none of the others; the other splits: nothing flagged.
        flagged = {"external": [True, True, False, False]}
        return {
            split: (
                SplitSample(labels=[0, 0, 1, 1]),
                {
                    "probability": np.array([0.9, 0.1, 0.9, 0.8]),
                    "threshold": np.full(4, 0.5),
                    "in_distribution": ~np.array(flagged.get(split, [False] * 4)),
                },
            )
            for split in splits
        }

    monkeypatch.setattr(scoring, "scored_outputs", scored_outputs)
    evaluated = run_store.latest_evaluations(os.path.join(runs, "metadata.sqlite"))
    rows = compare_lib.ood_rows(evaluated[:1])
    table = {row[1]: dict(zip(rows[0], row)) for row in rows[1:]}
    assert list(table) == ["train", "eval", "test", "external"]
    assert table["external"]["flagged OOD"] == "0.500" and table["external"]["error rate flagged"] == "0.500"
    assert table["external"]["error rate not flagged"] == "0.000"
    assert (table["test"]["flagged OOD"], table["test"]["error rate flagged"]) == ("0.000", "-")
    cli.main(["compare", "--root", runs, "--ood"])
    assert "error rate flagged" in capsys.readouterr().out
