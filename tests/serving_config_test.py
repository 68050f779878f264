"""Model server config: TF Serving's version policies, config files, k8s manifests (version discovery:
tests/serving_repository_test.py)."""

import argparse
import os

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import batching, cli, config

K8S = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving", "k8s")


def only_model(server_config):
    (model,) = server_config.model_config_list.config
    return model


def test_policies_choose_versions_like_tf_serving():
    available = [1, 3, 7, 12]
    latest = only_model(config.model_config("m", "/base"))
    assert config.wanted_versions(latest, available) == [12]
    assert config.wanted_versions(only_model(config.model_config("m", "/b", num_latest=2)), available) == [7, 12]
    assert config.wanted_versions(only_model(config.model_config("m", "/b", "all")), available) == available
    specific = only_model(config.model_config("m", "/b", "specific", versions=[3, 5]))
    assert config.wanted_versions(specific, available) == [3]
    assert config.wanted_versions(latest, []) == []
    unset = model_server_config_pb2.ModelConfig(name="m", base_path="/b")  # TF Serving's default: latest 1
    assert config.wanted_versions(unset, available) == [12]


def test_bad_policies_are_refused():
    with pytest.raises(ValueError, match="unknown version policy 'newest'"):
        config.model_config("m", "/b", "newest")
    with pytest.raises(ValueError, match="specific needs at least one version"):
        config.model_config("m", "/b", "specific")
    with pytest.raises(ValueError, match="at least 1 version"):
        config.model_config("m", "/b", num_latest=0)


def test_config_file_round_trips_with_labels_and_relative_paths(tmp_path):
    written = config.model_config(
        "pneumonia", str(tmp_path / "models"), "specific", versions=[2, 3], labels={"stable": 2, "canary": 3}
    )
    path = config.write(written, str(tmp_path / "models.config"))
    assert config.read(path) == written
    (tmp_path / "relative.config").write_text(
        'model_config_list { config { name: "m" base_path: "serving/m" model_platform: "tensorflow" } }'
    )
    assert only_model(config.read(str(tmp_path / "relative.config"))).base_path == str(tmp_path / "serving" / "m")


def test_bad_config_files_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="cannot read model config"):
        config.read(str(tmp_path / "missing.config"))
    garbage = tmp_path / "garbage.config"
    garbage.write_text("model_config_list { config { nam: 1 } }")
    with pytest.raises(ValueError, match="is not a ModelServerConfig text proto"):
        config.read(str(garbage))
    empty = tmp_path / "empty.config"
    empty.write_text("")
    with pytest.raises(ValueError, match="lists no model"):
        config.read(str(empty))
    nameless = tmp_path / "nameless.config"
    nameless.write_text('model_config_list { config { base_path: "/x" } }')
    with pytest.raises(ValueError, match="needs a name and a base_path"):
        config.read(str(nameless))


def test_k8s_manifests_pin_tf_serving_and_carry_a_valid_model_config_and_batching_parameters(tmp_path):
    documents = [
        d
        for name in sorted(os.listdir(K8S))
        if name.endswith(".yaml")
        for d in yaml.safe_load_all(open(os.path.join(K8S, name)))
        if d
    ]
    kinds = {d["kind"]: d for d in documents}
    assert {"Deployment", "Service", "ConfigMap"} <= set(kinds)
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "tensorflow/serving:2.16.1"
    assert container["readinessProbe"] and container["livenessProbe"] and container["resources"]["requests"]
    args = " ".join(container["args"])
    assert "--grpc_channel_arguments=grpc.max_receive_message_length=" in args
    assert "--enable_batching=true" in args and "--batching_parameters_file=" in args
    tls_mount = next(m for m in container["volumeMounts"] if f"--ssl_config_file={m['mountPath']}/" in args)
    volumes = {v["name"]: v for v in kinds["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes[tls_mount["name"]]["secret"]["secretName"] == "pneumonia-serving-tls"
    files = kinds["ConfigMap"]["data"]
    models = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(files["models.config"], models)
    assert only_model(models).model_version_policy.WhichOneof("policy_choice") is not None
    batching_file = tmp_path / "batching.config"  # the file `pneumonia serve --batching-parameters-file` reads too
    batching_file.write_text(files["batching.config"])
    parameters = batching.read_parameters(str(batching_file))
    assert parameters.num_batch_threads <= int(container["resources"]["requests"]["cpu"])
    assert parameters.max_batch_size == 32 and parameters.batch_timeout_micros == 0


def test_tfserving_backend_gets_the_same_settings(tmp_path):
    parser = argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    args = parser.parse_args(
        [
            "serve",
            "--serving-dir",
            str(tmp_path),
            "--grpc-port",
            "9500",
            "--rest-port",
            "9501",
            "--max-message-bytes",
            "1024",
            "--poll-seconds",
            "3",
            "--backend",
            "tfserving",
            "--ssl-config-file",
            "ssl.config",
        ]
    )
    config_path = config.write(cli.server_config(args), str(tmp_path / "models.config"))
    assert cli.tfserving_command(args, config_path) == [
        "tensorflow_model_server",
        "--port=9500",
        "--rest_api_port=9501",
        f"--model_config_file={config_path}",
        "--file_system_poll_wait_seconds=3",
        "--grpc_channel_arguments=grpc.max_receive_message_length=1024",
        f"--ssl_config_file={os.path.abspath('ssl.config')}",
    ]
    assert only_model(config.read(config_path)).base_path == str(tmp_path / "pneumonia")
