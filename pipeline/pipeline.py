"""The pipeline definition, independent of any runner (local, Beam and Kubeflow all call this)."""

import importlib.util
import os
from typing import Any, Dict, List, Optional, Union

import tensorflow_data_validation as tfdv
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec

from components.metrics_vocabulary import DEFAULT_INTERVALS
from components.pusher.component import create_pusher
from components.report.component import EvaluationReport
from components.served_baseline import executor as served_baseline_executor
from components.served_baseline.component import LatestServedModel
from components.threshold_calibrator.component import ThresholdCalibrator
from components.validation_gate.component import DataValidationGate
from pipeline.config import BLESSING_SPLIT, CALIBRATION_SPLIT, RunConfig
from pipeline.evaluation import SiteGate, create_eval_config

# Splits that stand in for serving data: compared with train by the schema's skew comparators.
SKEW_SPLITS = ("eval", "test")
SERVED_BASELINE_ID = "latest_served_model"  # its cache must stay off: the serving directory changes between runs
SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema", "schema.pbtxt")


def trainer_module_file() -> str:
    """Path of the Trainer's module file, found without importing the trainer package."""
    spec = importlib.util.find_spec("trainer")
    return os.path.join(list(spec.submodule_search_locations)[0], "task.py")


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: Union[str, tfx.dsl.experimental.RuntimeParameter],
    splits: List[str],
    schema_path: str,
    module_file: Optional[str],
    trainer_config: Union[Dict[str, Any], tfx.dsl.experimental.RuntimeParameter],
    serving_dir: str,
    model_name: str,
    min_auc: float,
    max_auc_drop: float,
    warm_start: bool = False,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    run_fn: Optional[str] = None,
    served_baseline: bool = False,
    site_gate: Optional[SiteGate] = None,
    confidence_intervals: str = DEFAULT_INTERVALS,
    non_inferiority_margin: Optional[float] = None,
) -> tfx.dsl.Pipeline:
    """TFRecords -> statistics, schema gate -> Trainer -> ThresholdCalibrator -> Evaluator (vs last blessed,
    and the optional `site_gate` on the calibration split) -> Pusher.

    The Trainer runs `module_file` (TFX packages it) or `run_fn`, a `module.function` already installed
    where it runs (the Kubeflow image). `data_root` and `trainer_config` may be RuntimeParameters:
    TFX accepts one for the whole custom_config string, not for keys inside it.
    The baseline is the latest blessed model from TFX's Resolver (needs TFX's metadata store), or with
    `served_baseline` the latest version in the serving directory (Kubeflow: components/served_baseline/).
    """
    if "train" not in splits or BLESSING_SPLIT not in splits:
        raise ValueError(f"splits must include 'train' and '{BLESSING_SPLIT}', got {splits}")
    if warm_start and served_baseline:
        raise ValueError(
            "warm_start needs TFX's latest-model Resolver, which open-source Kubeflow Pipelines "
            "cannot run; compile without warm_start"
        )
    if site_gate and site_gate.bounds() and site_gate.split not in splits:
        raise ValueError(
            f"a site gate (--site-min-sensitivity/--site-min-specificity) needs a {site_gate.split} "
            f"split: prepare one with --calibration-from SPLIT or a calibration:NAME=PATH source"
        )
    example_gen = tfx.components.ImportExampleGen(
        input_base=data_root,
        input_config=tfx.proto.Input(
            splits=[tfx.proto.Input.Split(name=split, pattern=f"{split}/*") for split in splits]
        ),
    )
    schema = tfx.components.ImportSchemaGen(schema_file=schema_path)
    statistics_gen = tfx.components.StatisticsGen(
        examples=example_gen.outputs["examples"],
        schema=schema.outputs["schema"],
        stats_options=tfdv.StatsOptions(enable_semantic_domain_stats=True),
    )  # image format/size statistics
    # Inferred schema: kept for comparison with the curated contract, which is what validates.
    inferred_schema = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"])
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema.outputs["schema"]
    )
    validation_gate = DataValidationGate(
        anomalies=example_validator.outputs["anomalies"],
        statistics=statistics_gen.outputs["statistics"],
        schema=schema.outputs["schema"],
        skew_splits=",".join(s for s in SKEW_SPLITS if s in splits),
    )

    warm_start_nodes = []
    if warm_start:
        # The latest trained model; run_fn refuses it when its architecture differs.
        latest_model = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestArtifactStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        ).with_id("latest_model_resolver")
        warm_start_nodes.append(latest_model)
    trainer = tfx.components.Trainer(
        module_file=module_file,
        run_fn=run_fn,
        examples=example_gen.outputs["examples"],
        schema=schema.outputs["schema"],
        base_model=latest_model.outputs["model"] if warm_start else None,
        train_args=tfx.proto.TrainArgs(splits=["train"]),
        eval_args=tfx.proto.EvalArgs(splits=[BLESSING_SPLIT]),
        custom_config=trainer_config,
    )
    trainer.add_upstream_node(validation_gate)

    model_base = os.path.join(serving_dir, model_name)
    if served_baseline:
        baseline = LatestServedModel(model_base=model_base).with_id(SERVED_BASELINE_ID)
    else:
        baseline = tfx.dsl.Resolver(
            strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
            model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
            model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
        ).with_id("latest_blessed_model_resolver")
    # The served threshold is set on the site's calibration split when there is one; everything downstream
    # judges, reports and pushes the calibrated model.
    calibrator = ThresholdCalibrator(
        examples=example_gen.outputs["examples"], model=trainer.outputs["model"], calibration_split=CALIBRATION_SPLIT
    )
    model = calibrator.outputs["calibrated_model"]
    evaluator = tfx.components.Evaluator(
        examples=example_gen.outputs["examples"],
        model=model,
        baseline_model=baseline.outputs["model"],
        example_splits=[split for split in splits if split != "train"],
        eval_config=create_eval_config(
            min_auc, max_auc_drop, BLESSING_SPLIT, site_gate, confidence_intervals, non_inferiority_margin
        ),
    )
    if served_baseline:
        evaluator.executor_spec = executor_spec.BeamExecutorSpec(served_baseline_executor.Evaluator)
    pusher = create_pusher(model, evaluator.outputs["blessing"], serving_dir, model_name)
    report = EvaluationReport(
        examples=example_gen.outputs["examples"],
        model=model,
        evaluation=evaluator.outputs["evaluation"],
        model_blessing=evaluator.outputs["blessing"],
        blessing_split=BLESSING_SPLIT,
    )

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[
            example_gen,
            statistics_gen,
            inferred_schema,
            schema,
            example_validator,
            validation_gate,
            *warm_start_nodes,
            trainer,
            calibrator,
            baseline,
            evaluator,
            pusher,
            report,
        ],
        enable_cache=True,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )


def pipeline_from_config(
    config: RunConfig,
    metadata_connection_config: Optional[metadata_store_pb2.ConnectionConfig] = None,
    **overrides: Any,
) -> tfx.dsl.Pipeline:
    """`overrides` replace create_pipeline arguments (Kubeflow: URIs, RuntimeParameters, run_fn)."""
    arguments = dict(
        pipeline_name=config.pipeline_name,
        pipeline_root=config.pipeline_root,
        data_root=config.data,
        splits=config.splits,
        schema_path=SCHEMA_PATH,
        module_file=trainer_module_file(),
        trainer_config=config.trainer_config(),
        serving_dir=config.serving_dir,
        model_name=config.model_name,
        min_auc=config.min_auc,
        max_auc_drop=config.max_auc_drop,
        warm_start=config.warm_start,
        site_gate=config.site_gate(),
        confidence_intervals=config.confidence_intervals,
        non_inferiority_margin=config.non_inferiority_margin,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=config.beam_args,
    )
    arguments.update(overrides)
    return create_pipeline(**arguments)
