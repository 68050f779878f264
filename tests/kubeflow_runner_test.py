"""Kubeflow compile: the YAML loads with kfp's loader, has a task per component with the pipeline's edges,
and carries the runtime parameters, the image, the Trainer's resources and the Beam arguments asked for."""
import json

import pytest
import yaml
from kfp import components
from tfx import v1 as tfx

from kubeflow import runner
from kubeflow.parameters import DATA_ROOT_PARAMETER, TRAINER_CONFIG_PARAMETER
from pipeline.config import RunConfig
from pneumonia.cli import main

IMAGE = "registry.example/pneumonia-pipeline:test"
LOCATIONS = runner.Locations.resolve(root="gs://bucket/pneumonia", data="gs://bucket/prepared")
BEAM_ARG = "--direct_num_workers=2"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(pipeline object, YAML spec, job JSON) for one compile with non-default settings."""
    config = RunConfig(architecture="resnet50", epochs=3, warm_start=True, beam_args=[BEAM_ARG],
                       trainer_cpu=4, trainer_memory_gb=16, trainer_gpus=1)
    out = str(tmp_path_factory.mktemp("kfp") / "pipeline.yaml")
    yaml_path, job_path = runner.compile_pipeline(config, LOCATIONS, out, IMAGE)
    with open(yaml_path) as f:
        spec = yaml.safe_load(f)
    with open(job_path) as f:
        job = json.load(f)
    return runner.kubeflow_pipeline(config, LOCATIONS), yaml_path, spec, job


def task_name(node, tasks) -> str:
    """The compiled task of a TFX node: a latest-blessed-model resolver becomes `<id>-model-resolver`."""
    blessed_resolver = f"{node.id}-model-resolver"
    return blessed_resolver if isinstance(node, tfx.dsl.Resolver) and blessed_resolver in tasks else node.id


def test_yaml_loads_with_kfp_and_matches_the_job(compiled):
    _, yaml_path, spec, job = compiled
    loaded = components.load_component_from_file(yaml_path)
    assert loaded.pipeline_spec.pipeline_info.name == "pneumonia"
    assert spec == job["pipelineSpec"]
    assert spec["defaultPipelineRoot"] == job["runtimeConfig"]["gcsOutputDirectory"] == LOCATIONS.pipeline_root


def test_a_task_per_component_with_the_pipelines_edges(compiled):
    pipeline, _, spec, _ = compiled
    tasks = spec["root"]["dag"]["tasks"]
    required = {"ImportExampleGen", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "Trainer",
                "ThresholdCalibrator", "latest_blessed_model_resolver-model-resolver", "Evaluator", "Pusher"}
    assert required <= set(tasks)
    for node in pipeline.components:
        assert task_name(node, tasks) in tasks
        expected = {task_name(upstream, tasks) for upstream in node.upstream_nodes}
        assert set(tasks[task_name(node, tasks)].get("dependentTasks", [])) == expected, node.id
    assert "latest_model_resolver" in tasks["Trainer"]["dependentTasks"]  # warm start
    assert "DataValidationGate" in tasks["Trainer"]["dependentTasks"]
    assert "Trainer" in tasks["ThresholdCalibrator"]["dependentTasks"]  # the calibrated model is what is judged
    assert {"ThresholdCalibrator", "latest_blessed_model_resolver-model-resolver"} <= set(
        tasks["Evaluator"]["dependentTasks"])
    assert {"Evaluator", "ThresholdCalibrator"} <= set(tasks["Pusher"]["dependentTasks"])


def test_runtime_parameters_have_the_defaults_asked_for(compiled):
    _, _, spec, job = compiled
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters[DATA_ROOT_PARAMETER]["defaultValue"] == "gs://bucket/prepared"
    trainer_config = json.loads(parameters[TRAINER_CONFIG_PARAMETER]["defaultValue"])
    assert (trainer_config["architecture"], trainer_config["epochs"]) == ("resnet50", 3)
    assert job["runtimeConfig"]["parameterValues"] == {name: p["defaultValue"] for name, p in parameters.items()}
    tasks = spec["root"]["dag"]["tasks"]
    assert tasks["ImportExampleGen"]["inputs"]["parameters"]["input_base"] == {
        "componentInputParameter": DATA_ROOT_PARAMETER}
    assert tasks["Trainer"]["inputs"]["parameters"]["custom_config"] == {
        "componentInputParameter": TRAINER_CONFIG_PARAMETER}


def test_every_task_runs_the_image_with_paths_inside_it(compiled):
    _, _, spec, _ = compiled
    containers = [e["container"] for e in spec["deploymentSpec"]["executors"].values() if "container" in e]
    assert len(containers) >= 8 and {c["image"] for c in containers} == {IMAGE}
    trainer = spec["root"]["dag"]["tasks"]["Trainer"]["inputs"]["parameters"]
    assert trainer["run_fn"]["runtimeValue"]["constant"] == runner.TRAINER_RUN_FN
    assert "module_file" not in trainer
    schema = spec["root"]["dag"]["tasks"]["ImportSchemaGen"]["inputs"]["parameters"]["schema_file"]
    assert schema["runtimeValue"]["constant"] == runner.IMAGE_SCHEMA_PATH
    assert all(BEAM_ARG in c["args"] for c in containers)


def test_trainer_resources_only_where_asked(compiled, tmp_path):
    _, _, spec, _ = compiled
    executors = spec["deploymentSpec"]["executors"]
    assert executors["Trainer_executor"]["container"]["resources"] == {
        "cpuLimit": 4.0, "cpuRequest": 4.0, "memoryLimit": 16.0, "memoryRequest": 16.0,
        "accelerator": {"type": "nvidia.com/gpu", "count": "1"}}
    assert "resources" not in executors["Evaluator_executor"]["container"]
    plain = runner.pipeline_job(runner.kubeflow_pipeline(RunConfig(), LOCATIONS), IMAGE,
                                runner.runtime_parameter_defaults(RunConfig(), LOCATIONS))
    assert "resources" not in plain["pipelineSpec"]["deploymentSpec"]["executors"]["Trainer_executor"]["container"]


def test_locations_need_a_root_or_every_uri():
    assert runner.Locations.resolve(root="gs://b/r/") == runner.Locations("gs://b/r/tfx/pneumonia", "gs://b/r/data",
                                                                          "gs://b/r/serving")
    with pytest.raises(ValueError, match="--pipeline-root, --serving-dir"):
        runner.Locations.resolve(data="gs://b/data")


def test_negative_resources_are_refused():
    with pytest.raises(ValueError, match="must not be negative"):
        runner.trainer_resources(RunConfig(trainer_gpus=-1))


def test_compile_command_writes_spec_and_job(tmp_path, capsys):
    out = tmp_path / "deploy" / "pipeline.yaml"
    main(["compile", "--out", str(out), "--root", "gs://bucket/p", "--image", IMAGE, "--epochs", "2"])
    assert f"pipeline spec: {out}" in capsys.readouterr().out
    job = json.loads((tmp_path / "deploy" / "pipeline.job.json").read_text())
    assert json.loads(job["runtimeConfig"]["parameterValues"][TRAINER_CONFIG_PARAMETER])["epochs"] == 2
    with pytest.raises(SystemExit, match="error: no URI for --pipeline-root, --data, --serving-dir"):
        main(["compile", "--out", str(out)])
    with pytest.raises(SystemExit, match="must be a .yaml or .yml file"):
        main(["compile", "--out", str(tmp_path / "pipeline.json"), "--root", "gs://bucket/p"])
