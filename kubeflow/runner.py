"""Compiles `create_pipeline(...)` for Kubeflow Pipelines v2 with TFX's KubeflowV2DagRunner.

Writes the pipeline spec as YAML (what `kfp.Client` uploads) and the full PipelineJob JSON beside it.
Runtime parameters: `data_root` (ImportExampleGen's input) and `trainer_config` (the Trainer's whole
custom_config as JSON). TFX 1.16 takes a RuntimeParameter for the custom_config string but not for
keys inside it, so architecture, epochs and the other Trainer settings are keys of `trainer_config`;
`pneumonia schedule --param epochs=10` edits them (see kubeflow/schedule.py).
"""

import dataclasses
import json
import os
import posixpath
from typing import Any, Dict, List

import yaml
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx import v1 as tfx
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

import pipeline as pipeline_package
from kubeflow import image as image_tags
from kubeflow.parameters import DATA_ROOT_PARAMETER, IMAGE_PROJECT_DIR, TRAINER_CONFIG_PARAMETER
from pipeline.config import RunConfig
from pipeline.pipeline import SCHEMA_PATH, SERVED_BASELINE_ID, pipeline_from_config

# The curated schema at the same place relative to the project as in this checkout.
PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(pipeline_package.__file__)))
IMAGE_SCHEMA_PATH = posixpath.join(IMAGE_PROJECT_DIR, os.path.relpath(SCHEMA_PATH, PROJECT_DIR).replace(os.sep, "/"))
# The trainer package is installed in the image, so the Trainer imports it instead of a TFX-built wheel.
TRAINER_RUN_FN = "trainer.task.run_fn"
JOB_SUFFIX = ".job.json"


@dataclasses.dataclass
class Locations:
    """Where a Kubeflow run reads and writes: URIs the cluster's pods can reach (e.g. gs://...)."""

    pipeline_root: str
    data: str
    serving_dir: str

    @classmethod
    def resolve(
        cls,
        root: str = "",
        pipeline_root: str = "",
        data: str = "",
        serving_dir: str = "",
        pipeline_name: str = "pneumonia",
    ) -> "Locations":
        """Explicit URIs win; the rest go under `root` like a local run root (tfx/<name>, data, serving)."""
        root = root.rstrip("/")
        defaults = (
            {"pipeline_root": f"{root}/tfx/{pipeline_name}", "data": f"{root}/data", "serving_dir": f"{root}/serving"}
            if root
            else {}
        )
        given = {"pipeline_root": pipeline_root, "data": data, "serving_dir": serving_dir}
        values = {name: value or defaults.get(name, "") for name, value in given.items()}
        missing = [name for name, value in values.items() if not value]
        if missing:
            flags = ", ".join("--" + name.replace("_", "-") for name in missing)
            raise ValueError(f"no URI for {flags}: give --root URI (e.g. gs://bucket/pneumonia) or each of them")
        return cls(**values)


ResourceSpec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec


def trainer_resources(config: RunConfig) -> ResourceSpec:
    """The Trainer pod's CPU, memory (GB) and GPUs: requests equal limits, so the pod is not throttled."""
    if min(config.trainer_cpu, config.trainer_memory_gb, config.trainer_gpus) < 0:
        raise ValueError("trainer_cpu, trainer_memory_gb and trainer_gpus must not be negative")
    resources = ResourceSpec(
        cpu_limit=config.trainer_cpu,
        cpu_request=config.trainer_cpu,
        memory_limit=config.trainer_memory_gb,
        memory_request=config.trainer_memory_gb,
    )
    if config.trainer_gpus:
        resources.accelerator.type = config.trainer_gpu_type
        resources.accelerator.count = config.trainer_gpus
    return resources


def runtime_parameter_defaults(config: RunConfig, locations: Locations) -> Dict[str, str]:
    """What a run gets when the scheduler passes no value: the compile-time settings."""
    return {
        DATA_ROOT_PARAMETER: locations.data,
        TRAINER_CONFIG_PARAMETER: json.dumps(config.trainer_config(), sort_keys=True),
    }


def kubeflow_pipeline(config: RunConfig, locations: Locations) -> tfx.dsl.Pipeline:
    """The same pipeline as a local run, with runtime parameters and paths inside the image."""
    defaults = runtime_parameter_defaults(config, locations)
    parameters = {
        name: tfx.dsl.experimental.RuntimeParameter(name=name, ptype=str, default=default)
        for name, default in defaults.items()
    }
    pipeline = pipeline_from_config(
        config,
        None,
        pipeline_root=locations.pipeline_root,
        data_root=parameters[DATA_ROOT_PARAMETER],
        trainer_config=parameters[TRAINER_CONFIG_PARAMETER],
        serving_dir=locations.serving_dir,
        schema_path=IMAGE_SCHEMA_PATH,
        module_file=None,
        run_fn=TRAINER_RUN_FN,
        served_baseline=True,  # open-source KFP cannot run TFX's Resolver: see components/served_baseline/
    )
    resources = trainer_resources(config)
    if resources.ByteSize():
        for component in pipeline.components:
            if isinstance(component, tfx.components.Trainer):
                component.with_platform_config(resources)
    return pipeline


def pipeline_job(pipeline: tfx.dsl.Pipeline, image: str, parameter_defaults: Dict[str, Any]) -> Dict[str, Any]:
    """The PipelineJob dict, its pipelineSpec carrying the parameter defaults and the pipeline root.

    TFX puts defaults only in the job's runtimeConfig; the uploaded spec needs them itself. TFX enables
    the cache of every task alike; the served-baseline task reads the serving directory, which its cache
    key does not cover, so a cached one would hand the Evaluator a stale baseline: its cache is off.
    """
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image, use_pipeline_spec_2_1=True)
    )
    job = runner.run(pipeline, parameter_values=parameter_defaults, write_out=False)
    spec = job["pipelineSpec"]
    spec["defaultPipelineRoot"] = pipeline.pipeline_info.pipeline_root
    for name, parameter in spec["root"]["inputDefinitions"]["parameters"].items():
        parameter["defaultValue"] = parameter_defaults[name]
        parameter["isOptional"] = True
    spec["root"]["dag"]["tasks"][SERVED_BASELINE_ID]["cachingOptions"] = {"enableCache": False}
    return job


def compile_pipeline(config: RunConfig, locations: Locations, out: str, image: str) -> List[str]:
    """Writes `out` (pipeline spec YAML) and `<out stem>.job.json` (PipelineJob); returns both paths.

    Refuses an image whose tag does not pin this working tree's code (kubeflow/image.py).
    """
    if not out.endswith((".yaml", ".yml")):
        raise ValueError(f"--out {out}: the package must be a .yaml or .yml file (what kfp.Client uploads)")
    config.trainer.check()  # what every run would fail on, refused before compiling
    image_tags.check_image(image)
    job = pipeline_job(kubeflow_pipeline(config, locations), image, runtime_parameter_defaults(config, locations))
    job_path = os.path.splitext(out)[0] + JOB_SUFFIX
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        yaml.safe_dump(job["pipelineSpec"], f, sort_keys=True)
    with open(job_path, "w", encoding="utf-8") as f:
        json.dump(job, f, indent=2, sort_keys=True)
    return [out, job_path]
