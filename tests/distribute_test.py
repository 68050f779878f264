"""The Trainer across workers: two worker processes on loopback train the tiny cnn as one, the chief's export
serves and matches a one-replica run of the same global batch and seed; bad settings fail fast in one line."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.signatures_test import serve_both
from tests.trainer_inputs_test import real_images, write_split
from tests.trainer_task_test import config_for, run
from trainer import distribute, models, signatures
from trainer.config import TrainerConfig

PER_REPLICA_BATCH = 4
WORKERS = 2
# Measured difference: 0.0 on this machine's CPU. The bound leaves room for all-reduce sums in another order on
# other CPUs, while dropout drawn per replica alone moved the probabilities by 7e-3 (measured).
TOLERANCE = 1e-4
WORKER_TIMEOUT_S = 120.0  # the workers start together here; the bound only catches a worker that died


@pytest.fixture(scope="module")
def data(shared_data, tmp_path_factory):
    """16 training and 12 validation films: two global batches of 8 per epoch, one partial in validation."""
    root = tmp_path_factory.mktemp("records")
    validation = real_images(shared_data, "train", per_class=6, skip=8)
    return {
        "train": write_split(str(root / "train"), real_images(shared_data, "train", per_class=8)),
        "eval": write_split(str(root / "eval"), validation),
        "validation_images": validation,
    }


def settings(**changes) -> dict:
    """Two epochs without augmentation or dropout (drawn per replica): identical global batches are then
    identical gradients."""
    tiny = {**models.REGISTRY["cnn"].tiny, "dropout": 0.0}
    defaults = {"model_config": tiny, "epochs": 2, "augment": False, "cache": False, "learning_rate": 1e-3}
    return config_for("cnn", **{**defaults, **changes})


def free_ports(count: int) -> list:
    sockets = [socket.socket() for _ in range(count)]
    for each in sockets:
        each.bind(("127.0.0.1", 0))
    ports = [each.getsockname()[1] for each in sockets]
    for each in sockets:
        each.close()
    return ports


def tf_config(ports: list, index: int) -> str:
    return json.dumps(
        {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]}, "task": {"type": "worker", "index": index}}
    )


def worker_main() -> None:
    """One worker: run_fn as TFX would, with TF_CONFIG from the parent; records that it finished."""
    data, folder, config = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    serving_dir = run(data, folder, config)
    index = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    with open(os.path.join(folder, f"worker-{index}.json"), "w") as f:
        json.dump({"export_exists_on_return": os.path.isdir(serving_dir)}, f)


@pytest.mark.scale
def test_two_workers_train_as_one_replica_run_of_the_same_global_batch(data, tmp_path):
    folder = str(tmp_path / "multi")
    config = settings(distribution="multi_worker", batch_size=PER_REPLICA_BATCH)
    config["worker_timeout_seconds"] = WORKER_TIMEOUT_S
    ports = free_ports(WORKERS)
    records = {"train": data["train"], "eval": data["eval"]}
    code = "from tests.distribute_test import worker_main; worker_main()"
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", code, json.dumps(records), folder, json.dumps(config)],
            env={**os.environ, "TF_CONFIG": tf_config(ports, index), "CUDA_VISIBLE_DEVICES": ""},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(WORKERS)
    ]
    logs = [worker.communicate(timeout=600)[0] for worker in workers]
    for index, worker in enumerate(workers):
        assert worker.returncode == 0, logs[index][logs[index].rfind("Traceback") :][:4000]
        with open(os.path.join(folder, f"worker-{index}.json")) as f:
            assert json.load(f) == {"export_exists_on_return": True}  # TFX checks it on every worker
    serving_dir = os.path.join(folder, "model", "Format-Serving")
    recorded = signatures.read_metadata(serving_dir)["training"]
    assert {key: recorded[key] for key in ("distribution", "workers", "replicas", "global_batch")} == {
        "distribution": "multi_worker",
        "workers": WORKERS,
        "replicas": WORKERS,
        "global_batch": WORKERS * PER_REPLICA_BATCH,
    }
    assert recorded["learning_rate"] == pytest.approx(WORKERS * 1e-3)

    # One replica (MirroredStrategy on the CPU), the same global batch and the linearly scaled rate.
    single = run(
        data,
        str(tmp_path / "single"),
        settings(distribution="mirrored", batch_size=WORKERS * PER_REPLICA_BATCH, learning_rate=WORKERS * 1e-3),
    )
    assert signatures.read_metadata(single)["training"]["replicas"] == 1
    images = [image for image, _ in data["validation_images"]]
    together, alone = serve_both(serving_dir, images), serve_both(single, images)
    np.testing.assert_allclose(together["probability"], alone["probability"], atol=TOLERANCE)


def test_an_unreachable_worker_fails_within_the_timeout(data, tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", tf_config(free_ports(WORKERS), 0))  # nobody listens on the peer's port
    config = settings(distribution="multi_worker", worker_timeout_seconds=2.0)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"worker 127\.0\.0\.1:\d+ in TF_CONFIG did not answer within 2 s"):
        run(data, str(tmp_path), config)
    assert time.monotonic() - started < 10


def test_settings_the_trainer_cannot_distribute_are_refused():
    with pytest.raises(ValueError, match="an ensemble trains nothing"):
        TrainerConfig.from_dict(config_for("ensemble", distribution="mirrored"))
    with pytest.raises(ValueError, match="unknown distribution 'parameter_server'"):
        TrainerConfig.from_dict(config_for("cnn", distribution="parameter_server"))
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        distribute.cluster_spec({})
    with pytest.raises(ValueError, match="TF_CONFIG must name a cluster and this task"):
        distribute.cluster_spec(
            {"TF_CONFIG": '{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}'}
        )
