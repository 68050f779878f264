"""The served-version baseline (Kubeflow's stand-in for TFX's latest-blessed-model Resolver): the newest
version copied into the Model artifact, none on a first run, and the Evaluator then without a baseline."""

import os

from tfx.components.evaluator import executor as tfx_evaluator
from tfx.types import standard_artifacts, standard_component_specs

from components.served_baseline import executor


def model_artifact(uri: str) -> standard_artifacts.Model:
    model = standard_artifacts.Model()
    model.uri = uri
    return model


def served_version(base: str, version: int, content: bytes) -> None:
    os.makedirs(os.path.join(base, str(version), "variables"))
    with open(os.path.join(base, str(version), "saved_model.pb"), "wb") as f:
        f.write(content)


def test_the_newest_served_version_becomes_the_baseline(tmp_path):
    base = str(tmp_path / "serving" / "pneumonia")
    served_version(base, 3, b"older")
    served_version(base, 12, b"newest")
    os.makedirs(os.path.join(base, ".staging-13-1"))  # a push in progress is not a version
    model = model_artifact(str(tmp_path / "artifact"))
    executor.resolve_latest_served(base, model)
    with open(tmp_path / "artifact" / "Format-Serving" / "saved_model.pb", "rb") as f:
        assert f.read() == b"newest"
    assert model.get_int_custom_property(executor.SERVED_VERSION_PROPERTY) == 12
    assert model.get_string_custom_property(executor.SERVED_FROM_PROPERTY) == os.path.join(base, "12")
    assert not executor.holds_no_model(model)


def test_nothing_served_yet_means_no_baseline_for_the_evaluator(tmp_path, monkeypatch):
    empty = model_artifact(str(tmp_path / "artifact"))
    executor.resolve_latest_served(str(tmp_path / "missing"), empty)
    assert executor.holds_no_model(empty) and not os.path.exists(tmp_path / "artifact")
    served = model_artifact(str(tmp_path / "other"))
    served.set_int_custom_property(executor.SERVED_VERSION_PROPERTY, 5)
    given = []
    monkeypatch.setattr(tfx_evaluator.Executor, "Do", lambda self, inputs, outputs, properties: given.append(inputs))
    key = standard_component_specs.BASELINE_MODEL_KEY
    for baselines, kept in (([empty], []), ([served], [served])):
        executor.Evaluator().Do({key: baselines, "model": [model_artifact("m")]}, {}, {})
        assert given[-1][key] == kept and len(given[-1]["model"]) == 1
