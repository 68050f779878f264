"""Where the Trainer trains: one device (`none`), the GPUs of one node (`mirrored`), or the workers that a
Kubeflow TFJob or a Vertex AI custom job names in TF_CONFIG (`multi_worker`).

The rules, the same for every strategy so that a run on N replicas is the run on one replica at N times the
batch:
- `batch_size` is per replica; the global batch, which the input pipeline batches and Keras splits across
  replicas, is batch_size × replicas.
- The learning rate scales linearly with the replicas (Goyal et al. 2017): the gradient of an N-times larger
  batch averages N times as many examples, so a step may be N times longer. No warm-up: the cosine decay
  starts from the scaled rate.
- Every worker reads all the TFRecords and keeps its slice of each global batch (tf.data auto-shard policy
  DATA). FILE would read 1/N of the files per worker, but ExampleGen writes as many shards as Beam chose (often
  fewer than the workers, or of unequal sizes, which leaves workers with unequal step counts), and it changes
  which examples meet in a batch. DATA keeps the global batches of a single-replica run with the same seed,
  which is what makes the two comparable; its cost is that each worker decodes every image (see
  docs/scaling.md for when that starts to matter).
- Only the chief calibrates the threshold, fits the OOD guard and exports. It does so on a plain copy of the
  trained weights, so no collective runs after training and the other workers have nothing to write; they wait
  at a barrier until the chief's export exists, because TFX's Trainer executor checks `serving_model_dir` on
  every worker when run_fn returns.
"""

import json
import os
import socket
import time
from typing import Any, Dict, List, NamedTuple

import tensorflow as tf

DISTRIBUTIONS = ("none", "mirrored", "multi_worker")
_JOBS = ("chief", "worker")  # the tasks that train; an evaluator or a parameter server does not


class Plan(NamedTuple):
    """The strategy and what the Trainer derives from it."""

    strategy: tf.distribute.Strategy
    workers: int
    replicas: int
    is_chief: bool

    def global_batch(self, batch_size: int) -> int:
        return batch_size * self.replicas

    def learning_rate(self, learning_rate: float) -> float:
        return learning_rate * self.replicas

    def summary(self, distribution: str, batch_size: int, learning_rate: float) -> Dict[str, Any]:
        """What the export metadata (and so the model card) records about the distribution."""
        return {
            "distribution": distribution,
            "workers": self.workers,
            "replicas": self.replicas,
            "per_replica_batch": batch_size,
            "global_batch": self.global_batch(batch_size),
            "learning_rate": self.learning_rate(learning_rate),
            "learning_rate_scaling": "linear in replicas",
            "auto_shard_policy": "DATA",
        }


def cluster_spec(environ=os.environ) -> Dict[str, Any]:
    """TF_CONFIG as the TFJob operator and Vertex AI set it, refused in one line if it cannot name this worker."""
    raw = environ.get("TF_CONFIG")
    if not raw:
        raise ValueError("distribution multi_worker needs TF_CONFIG (set by a TFJob or a Vertex AI job); none is set")
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        own = cluster[task["type"]][task["index"]]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise ValueError(f"TF_CONFIG must name a cluster and this task in it ({error!r}): {raw}") from None
    if task["type"] not in _JOBS:
        raise ValueError(f"TF_CONFIG task type {task['type']!r} does not train; the Trainer runs on {_JOBS}")
    return {"cluster": cluster, "task": task, "own": own}


def _peers(cluster: Dict[str, List[str]]) -> List[str]:
    return [address for job in _JOBS for address in cluster.get(job, [])]


def _wait_for_peers(own: str, peers: List[str], timeout: float) -> None:
    """Returns once this worker has reached every peer and every peer has reached it; fails in one line after
    `timeout` seconds otherwise.

    MultiWorkerMirroredStrategy waits for its peers without a bound (its coordination service's registration
    timeout does not end the leader's wait: tried with TF 2.16). So before it starts, each worker listens on its
    own port (which the strategy's gRPC server takes once this returns) and connects to every peer's. It keeps
    listening until each peer has connected too: a worker that closed its port as soon as it had seen the
    others could leave one of them waiting for a port that is not open yet. A host name that does not resolve
    counts as not up yet: a TFJob's services may appear after its pods."""
    deadline = time.monotonic() + timeout
    others = [peer for peer in peers if peer != own]
    with socket.create_server(("", int(own.rsplit(":", 1)[1]))) as listener:
        listener.settimeout(0.2)
        joined = 0
        while others or joined < len(peers) - 1:
            if time.monotonic() > deadline:
                missing = f"worker {others[0]}" if others else f"{len(peers) - 1 - joined} worker(s)"
                raise RuntimeError(f"{missing} in TF_CONFIG did not answer within {timeout:g} s")
            if others:
                host, port = others[0].rsplit(":", 1)
                try:
                    socket.create_connection((host, int(port)), timeout=1.0).close()
                    others.pop(0)
                except OSError:
                    time.sleep(0.1)
            if joined < len(peers) - 1:
                try:
                    listener.accept()[0].close()
                    joined += 1
                except socket.timeout:
                    pass


class _MultiWorkerMirrored(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy as Keras 3.12's fit calls it. Keras reduces a whole (images, labels) batch
    in one call to build the model from its shapes, its scalar logs (loss, AUC) along axis 0, and omits the
    axis for a sum; TF 2.16's strategy takes one value per call, an axis the value has, and a given axis. Each
    of those calls here does what it does under MirroredStrategy."""

    def reduce(self, reduce_op, value, axis=None):
        if isinstance(value, (tuple, list, dict)):
            return tf.nest.map_structure(lambda one: self.reduce(reduce_op, one, axis), value)
        if axis is not None and self.experimental_local_results(value)[0].shape.rank == 0:
            axis = None
        return super().reduce(reduce_op, value, axis)


def _multi_worker(connect_timeout: float) -> _MultiWorkerMirrored:
    """MultiWorkerMirroredStrategy once every worker in TF_CONFIG answers. All-reduce by RING over gRPC on
    CPU, AUTO (NCCL) on GPUs."""
    spec = cluster_spec()
    _wait_for_peers(spec["own"], _peers(spec["cluster"]), connect_timeout)
    implementation = tf.distribute.experimental.CommunicationImplementation
    chosen = implementation.AUTO if tf.config.list_physical_devices("GPU") else implementation.RING
    return _MultiWorkerMirrored(
        communication_options=tf.distribute.experimental.CommunicationOptions(implementation=chosen)
    )


def check(distribution: str, architecture: str) -> None:
    """Refuses a distribution the Trainer does not know, or one the architecture cannot use: an ensemble fits
    nothing (its members train in runs of their own), so there is nothing to distribute."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown distribution {distribution!r}; choose one of: {', '.join(DISTRIBUTIONS)}")
    if distribution != "none" and architecture == "ensemble":
        raise ValueError("an ensemble trains nothing (its members are trained runs): distribution must be none")


def plan(distribution: str, connect_timeout: float) -> Plan:
    """The strategy for `distribution` (checked by `check`), with its worker and replica counts."""
    if distribution == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
        return Plan(strategy, 1, strategy.num_replicas_in_sync, True)
    if distribution == "multi_worker":
        strategy = _multi_worker(connect_timeout)
        workers = len(_peers(cluster_spec()["cluster"]))
        return Plan(strategy, workers, strategy.num_replicas_in_sync, strategy.extended.should_checkpoint)
    return Plan(tf.distribute.get_strategy(), 1, 1, True)


def shard_by_data(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The dataset with auto-shard policy DATA (the module docstring says why)."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def barrier(chosen: Plan) -> None:
    """Returns on every worker once all have reached it: an all-reduce of one number across the workers."""
    if chosen.workers > 1:
        one = chosen.strategy.run(lambda: tf.constant(1.0))
        chosen.strategy.reduce(tf.distribute.ReduceOp.SUM, one, axis=None)
