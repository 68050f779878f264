"""The evaluation report on a tiny real run: every figure a valid PNG the HTML embeds, Grad-CAM panels, model card.

The run is built directly: real X-rays prepared into TFRecords, a tiny exported model with its Keras
weights where the Trainer writes them, and a real TFMA evaluation with the pipeline's own config.
"""

import glob
import os
import re
import shutil

import apache_beam as beam
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from ml_metadata.proto import metadata_store_pb2
from tfx_bsl.tfxio import tf_example_record

from components import metrics_vocabulary as vocabulary
from components.report import executor, plots, scoring
from components.report.page import slice_table
from pipeline.evaluation import create_eval_config
from pneumonia import cli
from pneumonia.analysis import ablation, policies, tables
from pneumonia.analysis import compare as compare_lib
from pneumonia.data import prepare
from pneumonia.data import sources as data_sources
from pneumonia.runs import scoring as run_scoring
from pneumonia.runs import store as run_store
from serving.repository import serving_model_dir
from tests.compare_test import Metadata
from tests.conftest import copy_subset
from tests.gcs_emulator import bucket, files_under, gcs  # noqa: F401 (fixtures)
from trainer import models, ood, signatures, task
from trainer.preprocessing import decode_image
from trainer.threshold import Threshold

IMAGE_SIZE = 64
TINY_SUBSET = {
    "chest_xray/train/NORMAL": 12,
    "chest_xray/train/PNEUMONIA": 12,
    "chest_xray/test/NORMAL": 12,
    "chest_xray/test/PNEUMONIA": 12,
    "external/NORMAL": 12,
    "external/PNEUMONIA": 12,
}
EVALUATED = ("eval", "test", "external")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def prepared_examples(shared_data: str, tmp: str) -> str:
    """An Examples artifact folder (Split-<name>/) holding real prepared records."""
    raw = copy_subset(shared_data, os.path.join(tmp, "raw"), TINY_SUBSET)
    data = os.path.join(tmp, "data")
    sources = [
        data_sources.Source.parse(f"kermany={raw}/chest_xray"),
        data_sources.Source.parse(f"external={raw}/external"),
    ]
    prepare.prepare(sources, data, eval_fraction=0.3)
    examples = os.path.join(tmp, "examples")
    for split in ("train",) + EVALUATED:
        shutil.copytree(os.path.join(data, split), os.path.join(examples, f"Split-{split}"))
    return examples


def export_model(model_uri: str, architecture: str, examples: str, work_dir: str) -> keras.Model:
    """A tiny untrained model, exported as the Trainer does, its threshold the median test probability
    (so every Grad-CAM group has members)."""
    settings = dict(models.REGISTRY[architecture].tiny)
    keras.utils.set_random_seed(1)  # here, not before prepare: Beam draws from the same generators
    model = models.build(architecture, IMAGE_SIZE, **settings)
    sample = scoring.read_split(examples, "test", cap=100)
    pixels = np.stack([decode_image(image, IMAGE_SIZE).numpy() for image in sample.images])
    median = float(np.median(model.predict(pixels, verbose=0)))
    serving_dir = serving_model_dir(model_uri)
    signatures.export(
        model,
        serving_dir,
        IMAGE_SIZE,
        Threshold(median, "youden", 0.8, 0.7, 7),
        work_dir,
        architecture,
        settings,
        guard=ood.noise_guard(model, IMAGE_SIZE),
    )
    os.makedirs(os.path.dirname(task.keras_weights_path(serving_dir)))
    model.save_weights(task.keras_weights_path(serving_dir))
    return model


def evaluate(model_uri: str, examples: str, output: str) -> str:
    """TFMA with the pipeline's metrics and slices over the evaluated splits (no blessing: no baseline here)."""
    eval_config = create_eval_config(0.0, 1.0, "eval")  # the production default intervals
    for metrics_spec in eval_config.metrics_specs:
        for metric in metrics_spec.metrics:
            del metric.per_slice_thresholds[:]
    shared_model = tfma.default_eval_shared_model(serving_model_dir(model_uri), eval_config=eval_config)
    records = tf_example_record.TFExampleRecord(
        file_pattern=[os.path.join(examples, f"Split-{split}", "*") for split in EVALUATED],
        raw_record_column_name=tfma.ARROW_INPUT_COLUMN,
    )
    with beam.Pipeline() as pipeline:
        _ = (
            pipeline
            | records.BeamSource()
            | tfma.ExtractEvaluateAndWriteResults(
                eval_config=eval_config, eval_shared_model=shared_model, output_path=output
            )
        )
    return output


@pytest.fixture(scope="module")
def tiny_run(shared_data, tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("report"))
    examples = prepared_examples(shared_data, tmp)
    model_uri = os.path.join(tmp, "model")
    export_model(model_uri, "cnn", examples, os.path.join(tmp, "work"))
    evaluation = evaluate(model_uri, examples, os.path.join(tmp, "evaluation"))
    return {
        "examples": examples,
        "split_names": ["train", *EVALUATED],
        "model": model_uri,
        "evaluation": evaluation,
        "tmp": tmp,
    }


@pytest.fixture(scope="module")
def report(tiny_run):
    out = os.path.join(tiny_run["tmp"], "report")
    index = executor.generate(
        tiny_run["examples"], tiny_run["split_names"], tiny_run["model"], tiny_run["evaluation"], out, blessed=True
    )
    return index, open(index, encoding="utf-8").read()


def test_every_figure_is_a_valid_png_embedded_in_the_page(report):
    index, page = report
    expected = {
        "class_distribution.png",
        "samples.png",
        "roc_pr.png",
        "precision_recall_threshold.png",
        "youden.png",
        "confusion.png",
        "calibration.png",
    }
    expected |= {f"gradcam_{split}_{stem}.png" for split in ("test", "external") for stem, *_ in executor.GROUPS}
    written = {os.path.basename(p) for p in glob.glob(os.path.join(os.path.dirname(index), "*.png"))}
    assert written == expected
    assert set(re.findall(r'<img src="([^"]+)"', page)) == expected
    for name in expected:
        data = open(os.path.join(os.path.dirname(index), name), "rb").read()
        assert data.startswith(PNG_MAGIC), name
        image = tf.io.decode_png(data).numpy()
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0, name


def test_page_has_slice_metrics_and_model_card(report):
    _, page = report
    for slice_name in (
        "dataset=kermany, split=eval",
        "dataset=kermany, split=test",
        "dataset=external, split=external",
        "all evaluated splits pooled",
    ):
        assert slice_name in page
    for heading in ("Intended use", "not a diagnosis", "Training data", "Limitations", "pediatric", "Threshold"):
        assert heading in page
    assert "blessed: True" in page and "Grad-CAM not drawn" not in page
    assert "flagged OOD" in page and "flags 0.5% of validation images by construction" in page


def test_border_attention_is_reported_per_split_and_outcome(report, tiny_run):
    """Over every scored image of each explained split, from the same Grad-CAM the panels draw."""
    from components.report import attention

    index, page = report
    table = attention.read(os.path.join(os.path.dirname(index), attention.ATTENTION_FILE))
    assert set(table) == {"eval", "test", "external"}
    info = scoring.model_info(tiny_run["model"])
    model, layer = scoring.keras_model(tiny_run["model"], info)
    sample = scoring.read_split(tiny_run["examples"], "test", cap=executor.Settings().max_images_per_split)
    scores = plots.Scores(
        np.array(sample.labels), scoring.predict(scoring.serving_function(tiny_run["model"]), sample.serialized)
    )
    assert (
        sum(table["test"][name].images for name, _, _ in attention.OUTCOMES)
        == table["test"]["all"].images
        == len(sample.labels)
    )
    again = scoring.border_attention(model, layer, IMAGE_SIZE, sample, scores, float(info["value"]))
    for name in attention.columns():
        assert again[name].images == table["test"][name].images
        assert again[name].mean == pytest.approx(table["test"][name].mean, abs=1e-6, nan_ok=True)
    assert 0.0 <= table["test"]["all"].mean <= 1.0
    assert "border attention" in page and f"{table['test']['all'].mean:.3f} ({len(sample.labels)})" in page


def test_grad_cam_panels_explain_the_exported_model(tiny_run):
    """The rebuilt Keras model reproduces the served probabilities, or the report refuses to explain it."""
    info = scoring.model_info(tiny_run["model"])
    model, layer = scoring.keras_model(tiny_run["model"], info)
    assert layer == models.REGISTRY["cnn"].gradcam_layer
    sample = scoring.read_split(tiny_run["examples"], "test", cap=8)
    scores = plots.Scores(
        np.array(sample.labels), scoring.predict(scoring.serving_function(tiny_run["model"]), sample.serialized)
    )
    explained = scoring.explain(model, layer, IMAGE_SIZE, sample, scores, np.arange(3), float(info["value"]))
    assert [e.grad_cam.shape for e in explained] == [(IMAGE_SIZE, IMAGE_SIZE)] * 3
    wrong = models.build("cnn", IMAGE_SIZE, **models.REGISTRY["cnn"].tiny)  # other random weights
    with pytest.raises(scoring.ReportError, match="belong to another model"):
        scoring.explain(wrong, layer, IMAGE_SIZE, sample, scores, np.arange(3), float(info["value"]))


def test_missing_keras_weights_leave_a_note_instead_of_panels(tiny_run, tmp_path):
    model_uri = str(tmp_path / "model")
    shutil.copytree(serving_model_dir(tiny_run["model"]), serving_model_dir(model_uri))
    index = executor.generate(
        tiny_run["examples"],
        tiny_run["split_names"],
        model_uri,
        tiny_run["evaluation"],
        str(tmp_path / "report"),
        settings=executor.Settings(max_images_per_split=10),
    )
    page = open(index, encoding="utf-8").read()
    assert "Grad-CAM not drawn: no Keras weights at" in page
    assert not glob.glob(str(tmp_path / "report" / "gradcam_*.png"))


def test_counts_cover_every_record_while_scoring_is_capped(tiny_run):
    sample = scoring.read_split(tiny_run["examples"], "external", cap=5)
    assert len(sample.labels) == 5
    assert sample.counts == {("external", 0): 12, ("external", 1): 12}


def test_cli_regenerates_the_report_of_the_latest_or_a_named_run(tiny_run, tmp_path, capsys):
    """`pneumonia report` finds what the pipeline's EvaluationReport node read, in ML Metadata."""
    root = str(tmp_path / "root")
    os.makedirs(root)
    metadata = Metadata(os.path.join(root, "metadata.sqlite"))
    inputs = {
        "examples": metadata.artifact("Examples", tiny_run["examples"], split_names=tiny_run["split_names"]),
        "model": metadata.artifact("Model", tiny_run["model"]),
        "evaluation": metadata.artifact("ModelEvaluation", tiny_run["evaluation"]),
        "model_blessing": metadata.artifact("ModelBlessing", "", blessed=False),
    }
    metadata.execution(
        "pneumonia",
        "run-1",
        "EvaluationReport",
        inputs,
        {"report": metadata.artifact("File", "")},
        state=metadata_store_pb2.Execution.FAILED,
    )  # a failed report is regenerated too
    cli.main(["report", "--root", root, "--out", str(tmp_path / "reports")])
    index = capsys.readouterr().out.strip().splitlines()[-1]
    assert index == str(tmp_path / "reports" / "run-1" / "index.html")
    assert "blessed: False" in open(index, encoding="utf-8").read()
    cli.main(["report", "--root", root, "--out", str(tmp_path / "reports"), "--run", "run-1", "--max-images", "3"])
    assert "Up to 3 images per split" in open(index, encoding="utf-8").read()
    with pytest.raises(SystemExit, match="run 'run-9' has no EvaluationReport execution"):
        cli.main(["report", "--root", root, "--run", "run-9"])


def copy_into(local_folder: str, uri: str) -> str:
    for folder, _, names in os.walk(local_folder):
        for name in names:
            target = os.path.join(uri, os.path.relpath(os.path.join(folder, name), local_folder))
            tf.io.gfile.makedirs(os.path.dirname(target))
            tf.io.gfile.copy(os.path.join(folder, name), target)
    return uri


def test_report_and_compare_on_a_bucket_score_the_real_model_and_evaluation(tiny_run, bucket, tmp_path):
    """Examples, model and TFMA output in gs://, the report written there; `compare` (and its policy table)
    reads them with the exported model scoring every record, no stand-in."""
    from sklearn.metrics import roc_auc_score

    from components.report import attention

    uris = {key: copy_into(tiny_run[key], f"{bucket}/{key}") for key in ("examples", "model", "evaluation")}
    index = executor.generate(
        uris["examples"],
        tiny_run["split_names"],
        uris["model"],
        uris["evaluation"],
        f"{bucket}/report",
        blessed=True,
        settings=executor.Settings(max_images_per_split=10),
    )
    assert index == f"{bucket}/report/index.html"
    written = files_under(f"{bucket}/report")
    assert "index.html" in written and "roc_pr.png" in written and any(n.startswith("gradcam_") for n in written)

    metadata_path = str(tmp_path / "metadata.sqlite")
    metadata = Metadata(metadata_path)
    model = metadata.artifact("Model", uris["model"])
    [model.id] = metadata.store.put_artifacts([model])
    metadata.execution("pneumonia", "run-1", "Trainer", {}, {"model": model}, custom_config={"weights": "none"})
    metadata.execution(
        "pneumonia",
        "run-1",
        "Evaluator",
        {
            "model": model,
            "examples": metadata.artifact("Examples", uris["examples"], split_names=tiny_run["split_names"]),
        },
        {
            "evaluation": metadata.artifact("ModelEvaluation", uris["evaluation"]),
            "blessing": metadata.artifact("ModelBlessing", "", blessed=True),
        },
    )
    metadata.execution(
        "pneumonia",
        "run-1",
        "EvaluationReport",
        {"model": model},
        {"report": metadata.artifact("File", f"{bucket}/report")},
    )
    evaluated = run_store.latest_evaluations(metadata_path)
    shown = compare_lib.attention_rows(evaluated)  # the report's border attention, read from the bucket
    assert [row[:2] for row in shown[1:]] == [["cnn", "eval"], ["cnn", "test"], ["cnn", "external"]]
    written = attention.read(f"{bucket}/report/{attention.ATTENTION_FILE}")
    assert [row[-1] for row in shown[1:]] == [
        f"{tables.format_number(written[split]['all'].mean)} ({written[split]['all'].images})"
        for split in ("eval", "test", "external")
    ]
    assert written["test"]["all"].images == 10  # every scored image of the split
    rows = compare_lib.compare_rows(evaluated)
    table = {row[1]: dict(zip(rows[0], row)) for row in rows[1:]}
    labels, scores, _ = run_scoring.score_splits(uris["examples"], ["test"], uris["model"])["test"]
    assert table["test"]["examples"] == str(len(labels)) == "24"
    auc = float(table["test"]["AUC"].split()[0])  # the cell may carry an interval or a case count after it
    assert auc == pytest.approx(roc_auc_score(labels, scores), abs=0.01)  # TFMA interpolates
    fixed = next(
        dict(zip(r[0], row)) for r in [policies.policy_rows(evaluated)] for row in r[1:] if row[1] == "fixed:0.5"
    )
    assert fixed["test sens"] == f"{np.mean(scores[labels == 1] >= 0.5):.3f}"
    assert fixed["test spec"] == f"{np.mean(scores[labels == 0] < 0.5):.3f}"


def test_slice_table_groups_by_split_and_shows_undefined_metrics_as_a_dash():
    """TFMA reports AUC and precision 0 on an all-NORMAL slice; the table shows "-" there, as compare does."""
    both = {"example_count": 20, "auc": 0.9, "precision": 0.75, "recall": 0.6, "specificity": 0.8}
    normal_only = {"example_count": 8, "auc": 0.0, "precision": 0.0, "recall": float("nan"), "specificity": 0.75}
    table = {
        "dataset=kermany, split=test": both,
        "label=0, split=test": normal_only,
        "patient_in_train=0, split=test": both,
        "dataset=external, split=external": both,
        "source=rsna, split=external": normal_only,
        "label=0": normal_only,
        "overall": both,
    }
    page = slice_table(table, "eval")
    sections = re.split(r"<h3>(\w+)</h3>", page)
    assert sections[1::2] == ["test", "external"]
    test, external = sections[2], sections[4]
    assert "<td>dataset=kermany</td><td>20</td><td>0.900</td>" in test and "<td>patient_in_train=0</td>" in test
    crossings = test[test.index("<details>") :]
    assert "test by label and pathogen (1 slices)" in crossings
    assert "<td>label=0</td><td>8</td><td>-</td><td>-</td>" in crossings  # AUC, precision
    assert "<td>source=rsna</td><td>8</td><td>-</td><td>-</td>" in external and "<details>" in external
    assert vocabulary.POOLED in external and "0.000" not in page


def test_the_rule_picks_the_lowest_validation_brier_and_breaks_near_ties_on_border_share():
    from pneumonia.analysis.ablation import pick

    assert pick([(0.10, 0.2), (0.08, 0.4), (0.09, 0.1)]) == (1, 1)
    assert pick([(0.080, 0.4), (0.0815, 0.3), (0.09, 0.1)]) == (1, 2)  # within 0.002: the lower border share
    assert pick([(float("nan"), 0.0), (0.2, float("nan")), (0.2015, 0.3)]) == (2, 2)
    with pytest.raises(ValueError, match="no candidate has a validation Brier"):
        pick([(float("nan"), 0.1)])


def test_ablation_and_targets_tables_read_the_real_model_and_evaluation(tiny_run, report):
    """Every figure comes from the exported model and TFMA's output: the ablation cells equal `compare`'s, the
    re-explained false positives are the model's own at its threshold, and a model is not better than itself."""
    from components.report import attention

    index, _ = report
    item = run_store.Evaluated(
        "cnn",
        IMAGE_SIZE,
        True,
        tiny_run["evaluation"],
        scoring.model_info(tiny_run["model"]),
        {},
        tiny_run["model"],
        tiny_run["examples"],
        attention.read(os.path.join(os.path.dirname(index), attention.ATTENTION_FILE)),
    )
    rows = ablation.ablation_rows([("baseline", item), ("again", item)])
    header, first, second = rows
    assert first[1:] == second[1:]
    shown = dict(zip(header, first))
    compared = {row[1]: dict(zip(compare_lib.compare_rows([item])[0], row)) for row in compare_lib.compare_rows([item])}
    assert shown["test AUC"] == compared["test"]["AUC"]
    labels, probabilities, _ = run_scoring.score_splits(tiny_run["examples"], ["test"], tiny_run["model"])["test"]
    false_positives = int(np.sum((labels == 0) & (probabilities >= float(item.model["value"]))))
    assert false_positives > 0 and shown["border on baseline FPs"].endswith(f"({false_positives})")
    assert 0.0 <= float(shown["border on baseline FPs"].split()[0]) <= 1.0

    targets = {row[0]: row for row in ablation.target_rows([item], item)[1:]}
    assert targets["test AUC"][2] == f"{float(compared['test']['AUC'].split()[0]):.3f}"
    baseline_row = targets[f"border share on the baseline's {false_positives} test false positives"]
    assert baseline_row[3:] == ["no", "+0.000"]
