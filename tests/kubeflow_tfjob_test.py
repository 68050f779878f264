"""kubeflow/tfjob-trainer.yaml: a TFJob whose chief and workers run the Trainer executor in the pinned image,
with TF_CONFIG left to the training operator. Parsed only: applying it needs a cluster with the operator."""

import os

import yaml

from kubeflow.image import IMAGE_NAME

MANIFEST = os.path.join(os.path.dirname(__file__), "..", "kubeflow", "tfjob-trainer.yaml")


def test_the_trainer_tfjob_runs_the_trainer_executor_on_every_replica():
    with open(MANIFEST) as f:
        job = yaml.safe_load(f)
    assert (job["apiVersion"], job["kind"]) == ("kubeflow.org/v1", "TFJob")
    replicas = job["spec"]["tfReplicaSpecs"]
    assert set(replicas) == {"Chief", "Worker"} and replicas["Chief"]["replicas"] == 1
    containers = [replica["template"]["spec"]["containers"] for replica in replicas.values()]
    assert containers[0] == containers[1]  # one pod template: the same code and resources on every replica
    (container,) = containers[0]
    assert container["name"] == "tensorflow"  # where the operator injects TF_CONFIG
    assert container["image"] == f"{IMAGE_NAME}:TAG"  # the README's sed puts `pneumonia image-tag` there
    assert "--executor_class_path=tfx.components.trainer.executor.GenericExecutor" in container["args"]
    assert "TF_CONFIG" not in {variable["name"] for variable in container.get("env", [])}
    assert container["ports"] == [{"name": "tfjob-port", "containerPort": 2222}]
