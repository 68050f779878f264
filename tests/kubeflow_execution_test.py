"""The compiled Kubeflow spec runs: `pneumonia compile`, then every task's own container command executed
as KFP's launcher would (kubeflow/local_executor.py), twice against one pipeline root, on real X-rays."""

import json
import os

import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma

from kubeflow import image
from kubeflow.local_executor import Container, LocalPipelineRun
from kubeflow.parameters import IMAGE_PROJECT_DIR, TRAINER_CONFIG_PARAMETER
from kubeflow.schedule import read_package
from pneumonia import cli
from serving import config as serving_config
from serving import repository
from tests.conftest import copy_subset
from tests.pipeline_e2e_test import tiny_config, versions
from tests.serving_fixtures import MODEL_NAME, image_request, start_server, stub
from trainer import signatures

pytestmark = pytest.mark.slow

TINY_SUBSET = {
    "chest_xray/train/NORMAL": 32,
    "chest_xray/train/PNEUMONIA": 32,
    "chest_xray/test/NORMAL": 8,
    "chest_xray/test/PNEUMONIA": 8,
    "external/NORMAL": 8,
    "external/PNEUMONIA": 8,
}
DATA_TASKS = {
    "ImportExampleGen",
    "ImportSchemaGen",
    "StatisticsGen",
    "SchemaGen",
    "ExampleValidator",
    "DataValidationGate",
}


@pytest.fixture(scope="module")
def executed(shared_data, tmp_path_factory):
    """(spec, run root, first execution, second execution with 2 epochs in trainer_config)."""
    tmp = tmp_path_factory.mktemp("kfp")
    raw = copy_subset(shared_data, str(tmp / "raw"), TINY_SUBSET)
    root = tmp / "root"
    cli.main(["prepare", "--out", str(root / "data"), f"kermany={raw}/chest_xray", f"external={raw}/external"])
    spec_path = str(tmp / "deploy" / "pipeline.yaml")
    cli.main(["compile", "--out", spec_path, "--root", str(root), "--config", tiny_config(tmp), "--epochs", "1"])
    spec = read_package(spec_path)
    container = Container(
        project_dir=image.PROJECT_DIR, image_project_dir=IMAGE_PROJECT_DIR, image_tag=image.pinned_tag()
    )
    first = LocalPipelineRun(spec, container).run()
    trainer_config = json.loads(
        spec["root"]["inputDefinitions"]["parameters"][TRAINER_CONFIG_PARAMETER]["defaultValue"]
    )
    second = LocalPipelineRun(
        spec, container, parameters={TRAINER_CONFIG_PARAMETER: json.dumps(dict(trainer_config, epochs=2))}
    ).run()
    return spec, root, first, second


def metadata(execution, key):
    return execution.artifacts[key]["metadata"]


def model_dir(execution) -> str:
    return os.path.join(execution.artifacts["model"]["uri"], "Format-Serving")


def test_every_task_of_the_spec_ran_and_the_second_run_reused_the_data_tasks(executed):
    spec, _, first, second = executed
    tasks = set(spec["root"]["dag"]["tasks"])
    assert set(first) == set(second) == tasks and len(tasks) == 12
    assert not [name for name, execution in first.items() if execution.cached]
    assert {name for name, execution in second.items() if execution.cached} == DATA_TASKS
    assert all(os.path.getsize(e.log_path) > 0 for e in first.values())


def test_a_model_was_trained_evaluated_blessed_pushed_and_served(executed, shared_data):
    _, root, first, second = executed
    assert tf.io.gfile.exists(os.path.join(model_dir(first["Trainer"]), "saved_model.pb"))
    assert metadata(first["Evaluator"], "blessing")["blessed"] == 1  # no baseline yet, min_auc 0
    pushed = metadata(first["Pusher"], "pushed_model")
    assert pushed["pushed"] == 1
    served = versions(os.path.join(root, "serving"))
    assert pushed["pushed_version"] == served[0]
    assert os.path.getsize(os.path.join(root, "serving", MODEL_NAME, served[0], repository.WARMUP_FILE)) > 0
    assert os.path.exists(os.path.join(first["EvaluationReport"].artifacts["report"]["uri"], "index.html"))

    latest = int(served[-1])  # the second run's model if it was blessed too
    server = start_server(serving_config.model_config(MODEL_NAME, os.path.join(root, "serving", MODEL_NAME)))
    try:
        image_bytes = open(
            os.path.join(
                shared_data,
                "chest_xray",
                "test",
                "NORMAL",
                sorted(os.listdir(os.path.join(shared_data, "chest_xray/test/NORMAL")))[0],
            ),
            "rb",
        ).read()
        response = stub(server).Predict(image_request([image_bytes]), timeout=60)
    finally:
        server.stop(grace_seconds=1)
    assert response.model_spec.version.value == latest
    assert 0 <= tf.make_ndarray(response.outputs["probability"])[0] <= 1


def test_trainer_config_given_at_execution_reaches_the_trainer(executed):
    _, _, first, second = executed
    for execution, epochs in ((first, 1), (second, 2)):
        given = json.loads(execution["Trainer"].executor_input["inputs"]["parameterValues"]["custom_config"])
        assert given["epochs"] == epochs
        assert signatures.read_metadata(model_dir(execution["Trainer"]))["training"]["epochs_run"] == epochs


def test_the_second_run_evaluates_against_the_latest_blessed_model(executed):
    _, root, first, second = executed
    assert metadata(first["latest_served_model"], "model")["served_version"] == 0  # nothing served yet
    baseline = second["latest_served_model"].artifacts["model"]
    first_version = metadata(first["Pusher"], "pushed_model")["pushed_version"]
    assert baseline["metadata"]["served_version"] == int(first_version)
    assert baseline["metadata"]["served_from"] == os.path.join(root, "serving", MODEL_NAME, first_version)
    assert second["Evaluator"].executor_input["inputs"]["artifacts"]["baseline_model"]["artifacts"] == [baseline]

    def compared(execution):
        return [
            m
            for m in tfma.load_metrics(execution.artifacts["evaluation"]["uri"])
            if any(item.key.is_diff for item in m.metric_keys_and_values)
        ]

    assert not compared(first["Evaluator"]) and compared(second["Evaluator"])
