"""Runs the pipeline locally and returns what it produced: LocalDagRunner (default) or BeamDagRunner
(multi-processing)."""

from tfx import v1 as tfx
from tfx.orchestration.beam.beam_dag_runner import BeamDagRunner

from pipeline.config import RunConfig
from pipeline.pipeline import pipeline_from_config
from pneumonia.runs import store

RUNNERS = ("local", "beam")


def run_pipeline(config: RunConfig) -> None:
    metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(config.metadata_path)
    pipeline = pipeline_from_config(config, metadata)
    if config.runner == "local":
        tfx.orchestration.LocalDagRunner().run(pipeline)
    elif config.runner == "beam":
        BeamDagRunner(beam_orchestrator_args=["--direct_running_mode=multi_processing", "--direct_num_workers=0"]).run(
            pipeline
        )
    else:
        raise ValueError(f"unknown runner {config.runner!r}; choose one of: {', '.join(RUNNERS)}")


def run(config: RunConfig) -> store.RunOutputs:
    """Runs the pipeline, then reads the newest run's outputs from ML Metadata."""
    run_pipeline(config)
    return store.latest_run_outputs(config.metadata_path, config.pipeline_name)
