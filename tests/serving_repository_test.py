"""The served-model repository (serving/repository.py): one rule for what a version is, read alike by the
Pusher, the served baseline and the server, so a folder without saved_model.pb is neither served nor reused."""

import os
from typing import List

from tfx.types import standard_artifacts
from tfx.utils import path_utils

from components.served_baseline import executor as served_baseline
from serving import config, repository
from serving.models import ServedModel
from serving.pixels import PixelBudget
from tests.pusher_test import make_model


def test_only_complete_numeric_version_folders_are_servable_but_every_number_is_taken(tmp_path):
    for name in ["1", "20", ".staging-30-99", "notes", "5"]:
        os.makedirs(tmp_path / name)
    for name in ["1", "20", ".staging-30-99"]:
        (tmp_path / name / repository.SAVED_MODEL_FILE).write_bytes(b"graph")
    assert repository.servable_versions(str(tmp_path)) == [1, 20]  # 5 has no saved_model.pb
    assert repository.version_folders(str(tmp_path)) == [1, 5, 20]
    assert repository.servable_versions(str(tmp_path / "absent")) == []


def loaded_by_server(model_base: str, monkeypatch) -> List[int]:
    """The versions the server's poll loads under the `all` policy (each load recorded, not run)."""
    (model,) = config.model_config("pneumonia", model_base, "all").model_config_list.config
    served = ServedModel(model, PixelBudget())
    loaded = []
    monkeypatch.setattr(served, "_load", loaded.append)
    served.poll()
    return loaded


def push(model_dir: str, model_base: str) -> int:
    return int(repository.push_atomically(model_dir, model_base, repository.model_fingerprint(model_dir), model_dir))


def test_pusher_and_server_agree_a_folder_without_saved_model_is_neither_served_nor_reused(tmp_path, monkeypatch):
    base = str(tmp_path / "serving" / "pneumonia")
    first = make_model(str(tmp_path / "first"))
    pushed = push(first, base)
    broken = pushed + 1000  # a later push that never got its saved_model.pb (or one still being written)
    os.remove(os.path.join(make_model(os.path.join(base, str(broken))), repository.SAVED_MODEL_FILE))

    assert loaded_by_server(base, monkeypatch) == [pushed]
    assert repository.latest_fingerprint(base) == repository.model_fingerprint(first)  # no re-push of `first`
    baseline = standard_artifacts.Model()
    baseline.uri = str(tmp_path / "baseline")
    served_baseline.resolve_latest_served(base, baseline)
    assert baseline.get_int_custom_property(served_baseline.SERVED_VERSION_PROPERTY) == pushed

    again = push(make_model(str(tmp_path / "second"), b"another graph"), base)
    assert again > broken  # the broken folder's number is not written into
    assert loaded_by_server(base, monkeypatch) == repository.servable_versions(base) == [pushed, again]


def test_the_model_artifact_layout_is_tfx_own():
    assert repository.serving_model_dir("gs://bucket/tfx/Trainer/model/7") == path_utils.serving_model_dir(
        "gs://bucket/tfx/Trainer/model/7"
    )
