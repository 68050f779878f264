"""Warm-up requests: written with every push (one per signature), replayed by `pneumonia serve` when it loads
a version, through the code that answers real requests, with TF Serving's failure rules."""

import os
import shutil

import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2, prediction_log_pb2

from components.pusher.warmup import write_warmup_requests
from serving import config, repository, server, warmup
from serving.models import LoadedVersion
from serving.pixels import PixelBudget
from tests.serving_fixtures import MODEL_NAME, exported_models, start_server  # noqa: F401 (fixture)

State = get_model_status_pb2.ModelVersionStatus.State


def push(model_dir: str, base: str) -> str:
    """What the Pusher executor does: an atomic version with the warm-up requests written into it."""
    version = repository.push_atomically(
        model_dir,
        base,
        repository.model_fingerprint(model_dir),
        model_dir,
        add_files=lambda version_dir: write_warmup_requests(model_dir, version_dir),
    )
    return os.path.join(base, version)


@pytest.fixture
def replayed(monkeypatch):
    """(version, kind, signature) of every request the server's handlers answered."""
    calls = []

    def spy(kind, handler):
        def recorded(loaded, request):
            calls.append((loaded.version, kind, request.model_spec.signature_name))
            return handler(loaded, request)

        return recorded

    monkeypatch.setattr(server, "predict", spy("predict_log", server.predict))
    monkeypatch.setattr(server, "classify", spy("classify_log", server.classify))
    return calls


def logged_signature(record: prediction_log_pb2.PredictionLog) -> str:
    return getattr(record, record.WhichOneof("log_type")).request.model_spec.signature_name


def write_records(path: str, logs) -> None:
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log if isinstance(log, bytes) else log.SerializeToString())


def test_a_push_ships_one_request_per_signature_and_each_answers(exported_models, tmp_path, replayed):
    version_dir = push(exported_models[0], str(tmp_path / "serving" / MODEL_NAME))
    loaded = LoadedVersion(MODEL_NAME, int(os.path.basename(version_dir)), version_dir, PixelBudget())
    records = warmup.read_records(version_dir)
    assert sorted(logged_signature(r) for r in records) == sorted(loaded.signature_defs)
    assert server.replay_warmup(loaded) == len(records) == len(loaded.signature_defs)
    assert sorted(signature for _, _, signature in replayed) == sorted(loaded.signature_defs)
    kinds = {signature: kind for _, kind, signature in replayed}
    assert all(
        kinds[name] == ("classify_log" if definition.method_name.endswith("/classify") else "predict_log")
        for name, definition in loaded.signature_defs.items()
    )
    assert not os.path.exists(os.path.join(exported_models[0], repository.WARMUP_FILE))  # the Trainer's model untouched


def test_the_server_replays_on_load_and_a_failing_warmup_fails_the_version(exported_models, tmp_path, replayed):
    base = str(tmp_path / "serving" / MODEL_NAME)
    good = push(exported_models[0], base)
    served = start_server(config.model_config(MODEL_NAME, base))
    try:
        assert {(version, signature) for version, _, signature in replayed} == {
            (int(os.path.basename(good)), logged_signature(r)) for r in warmup.read_records(good)
        }
        assert len(replayed) >= 2
        broken = push(exported_models[1], base)
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = "predict_images"
        request.inputs["images"].CopyFrom(tf.make_tensor_proto([b"not an image"]))
        write_records(
            os.path.join(broken, repository.WARMUP_FILE),
            [prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))],
        )
        served.manager.poll()
        statuses = {s.version: s for s in served.manager.model(MODEL_NAME).status()}
        failed = statuses[int(os.path.basename(broken))]
        assert failed.state == State.END and "input rejected by the model" in failed.status.error_message
        assert served.manager.resolve(MODEL_NAME).version == int(os.path.basename(good))  # still serving
    finally:
        served.stop(grace_seconds=1)


def test_no_file_means_no_warmup_as_in_tf_serving(exported_models, replayed):
    loaded = LoadedVersion(MODEL_NAME, 1, exported_models[0], PixelBudget())
    assert warmup.read_records(exported_models[0]) == [] and server.replay_warmup(loaded) == 0
    assert replayed == []


def test_unreadable_or_unsupported_warmup_files_are_refused(exported_models, tmp_path):
    path = str(tmp_path / repository.WARMUP_FILE)
    tf.io.gfile.makedirs(os.path.dirname(path))
    with open(path, "wb") as f:
        f.write(b"this is not a TFRecord file at all")
    with pytest.raises(warmup.WarmupError, match="Please verify your warmup data is in TFRecord format"):
        warmup.read_records(str(tmp_path))
    write_records(path, [b"\xff\xff not a PredictionLog"])
    with pytest.raises(warmup.WarmupError, match="Failed to parse warmup record 1 from"):
        warmup.read_records(str(tmp_path))
    write_records(path, [prediction_log_pb2.PredictionLog()] * (warmup.MAX_RECORDS + 1))
    with pytest.raises(warmup.WarmupError, match=r"Number of warmup records exceeds the maximum \(1000\)"):
        warmup.read_records(str(tmp_path))
    model = str(tmp_path / "model")
    shutil.copytree(exported_models[0], model)
    write_records(
        os.path.join(model, repository.WARMUP_FILE),
        [prediction_log_pb2.PredictionLog(regress_log=prediction_log_pb2.RegressLog())],
    )
    with pytest.raises(
        warmup.WarmupError,
        match="warmup record 1: regress_log cannot be replayed: this server answers classify_log, predict_log only",
    ):
        server.replay_warmup(LoadedVersion(MODEL_NAME, 1, model, PixelBudget()))
