"""The local executor of compiled specs on small hand-written specs (Python one-liners as containers):
placeholders, URIs, metadata passing, the cache, failures, and every refusal."""

import json
import os
import re
import sys

import pytest
import yaml

from kubeflow import local_executor
from kubeflow.local_executor import Container, LocalPipelineRun, SpecNotSupported, TaskFailed

# A container that records what it got, writes a file into its output artifact, and reports metadata.
WRITER = """
import json, os, sys
executor_input, greeting, count, out_uri = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
os.makedirs(out_uri)
open(os.path.join(out_uri, "text"), "w").write(greeting * int(count))
with open(os.path.join(out_uri, "executor_input.json"), "w") as f:
    json.dump(executor_input, f)
output = {"artifacts": {"text": {"artifacts": [{"metadata": {"length": len(greeting) * int(count)}}]}}}
json.dump(output, open(executor_input["outputs"]["outputFile"], "w"))
"""
READER = """
import json, os, sys
executor_input, in_uri = json.loads(sys.argv[1]), sys.argv[2]
text = open(os.path.join(in_uri, "text")).read()
if text == "fail":
    sys.exit("the reader refuses this text")
os.makedirs(os.path.dirname(executor_input["outputs"]["outputFile"]), exist_ok=True)
seen = os.path.join(os.path.dirname(executor_input["outputs"]["outputFile"]), "seen.json")
json.dump(executor_input, open(seen, "w"))
"""
TEXT_TYPE = {"schemaTitle": "system.Artifact"}


def container_spec(script, *args):
    return {"container": {"image": "example:1", "command": ["python", "-c", script], "args": list(args)}}


def make_spec():
    return {
        "pipelineInfo": {"name": "toy"},
        "schemaVersion": "2.1.0",
        "root": {
            "inputDefinitions": {
                "parameters": {"greeting": {"parameterType": "STRING", "defaultValue": "hi", "isOptional": True}}
            },
            "dag": {
                "tasks": {
                    "read": {
                        "componentRef": {"name": "reader"},
                        "dependentTasks": ["write"],
                        "cachingOptions": {"enableCache": True},
                        "inputs": {
                            "artifacts": {
                                "text": {"taskOutputArtifact": {"producerTask": "write", "outputArtifactKey": "text"}}
                            }
                        },
                    },
                    "write": {
                        "componentRef": {"name": "writer"},
                        "cachingOptions": {"enableCache": True},
                        "inputs": {
                            "parameters": {
                                "greeting": {"componentInputParameter": "greeting"},
                                "count": {"runtimeValue": {"constant": 3.0}},
                            }
                        },
                    },
                }
            },
        },
        "components": {
            "writer": {
                "executorLabel": "writer_executor",
                "inputDefinitions": {
                    "parameters": {
                        "greeting": {"parameterType": "STRING"},
                        "count": {"parameterType": "NUMBER_INTEGER"},
                        "suffix": {"parameterType": "STRING", "defaultValue": "!"},
                    }
                },
                "outputDefinitions": {"artifacts": {"text": {"artifactType": TEXT_TYPE}}},
            },
            "reader": {
                "executorLabel": "reader_executor",
                "inputDefinitions": {"artifacts": {"text": {"artifactType": TEXT_TYPE}}},
            },
        },
        "deploymentSpec": {
            "executors": {
                "writer_executor": container_spec(
                    WRITER,
                    "{{$}}",
                    "{{$.inputs.parameters['greeting']}}",
                    "{{$.inputs.parameters['count']}}",
                    "{{$.outputs.artifacts['text'].uri}}",
                ),
                "reader_executor": container_spec(READER, "{{$}}", "{{$.inputs.artifacts['text'].path}}"),
            }
        },
    }


def run(spec, root, **parameters):
    container = Container(
        project_dir=os.getcwd(), image_project_dir="/opt/pneumonia", image_tag="1", python=sys.executable
    )
    return LocalPipelineRun(spec, container, str(root), parameters).run()


def test_tasks_run_in_order_with_placeholders_uris_and_metadata(tmp_path):
    executions = run(make_spec(), tmp_path, greeting="ab")
    write, read = executions["write"], executions["read"]
    text = write.artifacts["text"]
    assert re.fullmatch(rf"{tmp_path}/toy/[0-9a-f]{{32}}/write/[0-9a-f-]{{36}}/text", text["uri"])
    assert open(os.path.join(text["uri"], "text")).read() == "ababab"  # the number 3.0 substituted as "3"
    got = json.load(open(os.path.join(text["uri"], "executor_input.json")))
    assert got["inputs"]["parameterValues"] == {"greeting": "ab", "count": 3.0, "suffix": "!"}  # with defaults
    assert got["outputs"]["artifacts"]["text"]["artifacts"][0] == {
        "name": "text",
        "type": TEXT_TYPE,
        "uri": text["uri"],
    }
    assert got["outputs"]["outputFile"] == os.path.join(os.path.dirname(text["uri"]), "output_metadata.json")
    seen = json.load(open(os.path.join(os.path.dirname(read.executor_input["outputs"]["outputFile"]), "seen.json")))
    passed = seen["inputs"]["artifacts"]["text"]["artifacts"][0]
    assert passed == text and passed["metadata"] == {"length": 6, "display_name": "text"}
    assert passed["name"].isdigit()  # the metadata id, as converter.go gives it
    assert os.path.exists(write.log_path) and write.cpu_seconds > 0


def test_the_cache_reuses_outputs_only_for_the_same_key_and_where_enabled(tmp_path):
    spec = make_spec()
    first = run(spec, tmp_path)
    again = run(spec, tmp_path)
    assert [again["write"].cached, again["read"].cached] == [True, True]
    assert again["write"].artifacts == first["write"].artifacts
    changed = run(spec, tmp_path, greeting="yo")
    assert not changed["write"].cached and not changed["read"].cached  # a new input artifact name downstream
    spec["root"]["dag"]["tasks"]["read"]["cachingOptions"] = {"enableCache": False}
    uncached = run(spec, tmp_path)
    assert uncached["write"].cached and not uncached["read"].cached


def test_a_failing_task_stops_the_run_with_its_reason(tmp_path):
    spec = make_spec()
    spec["root"]["dag"]["tasks"]["write"]["inputs"]["parameters"]["count"]["runtimeValue"]["constant"] = 1
    with pytest.raises(TaskFailed, match=r"task read failed \(exit code 1\): the reader refuses this text; log: "):
        run(spec, tmp_path, greeting="fail")


def with_change(change):
    spec = make_spec()
    change(spec)
    return spec


def executor(spec, label):
    return spec["deploymentSpec"]["executors"][label]


REFUSED = {
    "resolver executors": lambda s: (
        executor(s, "writer_executor").update({"resolver": {"outputArtifactQueries": {}}})
        or executor(s, "writer_executor").pop("container")
    ),
    "importer nodes": lambda s: (
        executor(s, "writer_executor").update({"importer": {"artifactUri": {"constant": "gs://b/x"}}})
        or executor(s, "writer_executor").pop("container")
    ),
    r"conditions \(triggerPolicy": lambda s: s["root"]["dag"]["tasks"]["read"].update(
        {"triggerPolicy": {"condition": "inputs.parameter_values['x'] == 'y'"}}
    ),
    "loops": lambda s: s["root"]["dag"]["tasks"]["read"].update({"parameterIterator": {}}),
    "nested DAGs": lambda s: s["components"]["reader"].update({"dag": {"tasks": {}}}),
    r"runs \['sh'\], not Python": lambda s: executor(s, "reader_executor")["container"].update({"command": ["sh"]}),
    r"task read runs image 'example:2'; this checkout stands in for tag 1 only": lambda s: executor(
        s, "reader_executor"
    )["container"].update({"image": "example:2"}),
    r"placeholder \{\{\$.pipeline_job_name\}\}": lambda s: executor(s, "reader_executor")["container"]["args"].append(
        "{{$.pipeline_job_name}}"
    ),
    "comes from .'componentInputArtifact'.": lambda s: (
        s["root"]["dag"]["tasks"]["read"]["inputs"]["artifacts"]["text"].update({"componentInputArtifact": "x"})
        or s["root"]["dag"]["tasks"]["read"]["inputs"]["artifacts"]["text"].pop("taskOutputArtifact")
    ),
    r"depend on each other in a cycle": lambda s: s["root"]["dag"]["tasks"]["write"].update(
        {"dependentTasks": ["read"]}
    ),
}


@pytest.mark.parametrize("reason", list(REFUSED))
def test_what_it_cannot_run_as_kfp_would_is_refused_before_any_task(reason, tmp_path):
    with pytest.raises(SpecNotSupported, match=reason):
        run(with_change(REFUSED[reason]), tmp_path)
    assert not os.path.exists(tmp_path / "toy")


def test_bad_runtime_parameters_and_roots_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown runtime parameter\(s\) \['greting'\]; the spec has \['greeting'\]"):
        run(make_spec(), tmp_path, greting="x")
    with pytest.raises(ValueError, match="runtime parameter greeting must be STRING, got int"):
        run(make_spec(), tmp_path, greeting=3)
    with pytest.raises(SpecNotSupported, match="pipeline root 'gs://b/root': this executor needs a local directory"):
        run(make_spec(), "gs://b/root")


def test_numbers_are_substituted_as_the_launcher_formats_them():
    texts = local_executor.substitute(
        ["{{$.inputs.parameters['n']}}"], {"inputs": {"parameterValues": {"n": 1e-7}}, "outputs": {}}
    )
    assert texts == ["0.0000001"]  # Go's strconv.FormatFloat(v, 'f', -1, 64)
    assert local_executor._parameter_text(2.0) == "2" and local_executor._parameter_text(True) == "true"
    assert local_executor._parameter_text({"a": [1]}) == '{"a":[1]}'


def test_tfx_latest_blessed_model_resolver_is_refused():
    """The spec TFX compiles for LatestBlessedModelStrategy: what open-source KFP rejects, refused here too."""
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    from kubeflow import runner
    from pipeline.config import RunConfig
    from pipeline.pipeline import pipeline_from_config

    pipeline = pipeline_from_config(
        RunConfig(),
        None,
        pipeline_root="/tmp/unused",
        module_file=None,
        run_fn=runner.TRAINER_RUN_FN,
        served_baseline=False,
    )
    compiler = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image="example:1", use_pipeline_spec_2_1=True)
    )
    reason = local_executor.refusal(compiler.run(pipeline, write_out=False)["pipelineSpec"])
    assert reason.startswith("task latest_blessed_model_resolver-model-")
    assert "resolver executors (TFX Resolver) are not run by open-source KFP" in reason


def test_run_compiled_command_runs_a_package_with_params(tmp_path, capsys):
    from kubeflow import image
    from pneumonia.cli import main

    spec = make_spec()
    for executor_spec in spec["deploymentSpec"]["executors"].values():
        executor_spec["container"]["image"] = f"registry.example/pneumonia-pipeline:{image.pinned_tag()}"
    package = tmp_path / "pipeline.yaml"
    package.write_text(yaml.safe_dump(spec))
    main(["run-compiled", str(package), "--pipeline-root", str(tmp_path / "root"), "--param", "greeting=yo"])
    printed = capsys.readouterr().out.splitlines()
    run_id = printed[0].split()[1].rstrip(":")
    assert printed[0].startswith("run ") and printed[0].endswith(
        "2 tasks under " + os.path.join(str(tmp_path), "root", "toy", run_id)
    )
    assert [line.split()[0] for line in printed[1:]] == ["write", "read"] and "ran in" in printed[1]
    with pytest.raises(SystemExit, match="error: --param greting: unknown parameter; the package takes greeting"):
        main(["run-compiled", str(package), "--pipeline-root", str(tmp_path / "root"), "--param", "greting=x"])
    with pytest.raises(SystemExit, match=r"error: pipeline root 'gs://b': this executor needs a local directory"):
        main(["run-compiled", str(package), "--pipeline-root", "gs://b"])
