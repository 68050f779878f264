"""`pneumonia compile` and `pneumonia schedule`: the Kubeflow Pipelines subcommands."""

import argparse

from kubeflow import image
from kubeflow.local_executor import Container, LocalPipelineRun, TaskFailed
from kubeflow.parameters import IMAGE_PROJECT_DIR
from pipeline.config import RunConfig
from trainer.config import TrainerConfig


def cmd_compile(args: argparse.Namespace) -> None:
    from kubeflow import runner  # keeps TensorFlow out of CLI start-up

    try:
        config = RunConfig.load(
            args.config,
            pipeline_name=args.pipeline_name,
            model_name=args.model_name,
            min_auc=args.min_auc,
            beam_args=args.beam_arg or None,
            trainer_cpu=args.trainer_cpu,
            trainer_memory_gb=args.trainer_memory_gb,
            trainer_gpus=args.trainer_gpus,
            trainer_gpu_type=args.trainer_gpu_type,
            **TrainerConfig.overrides(args),
        )
        locations = runner.Locations.resolve(
            args.root or "", args.pipeline_root or "", args.data or "", args.serving_dir or "", config.pipeline_name
        )
        paths = runner.compile_pipeline(config, locations, args.out, args.image or image.default_image())
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}")
    print(f"pipeline spec: {paths[0]}\npipeline job:  {paths[1]}")


def cmd_schedule(args: argparse.Namespace) -> None:
    from kubeflow.schedule import ScheduleError, ScheduleRequest, schedule  # keeps kfp's client out of start-up

    request = ScheduleRequest(
        host=args.host,
        package=args.package,
        cron=args.cron,
        experiment=args.experiment,
        job_name=args.name,
        pipeline_name=args.pipeline_name or "",
        assignments=args.param or [],
        max_concurrency=args.max_concurrency,
        create_experiment=args.create_experiment,
        namespace=args.namespace,
    )
    try:
        schedule(request, dry_run=args.dry_run)
    except ScheduleError as error:
        raise SystemExit(f"error: {error}")


def cmd_run_compiled(args: argparse.Namespace) -> None:
    from kubeflow.schedule import ScheduleError, pipeline_parameters, read_package  # keeps kfp out of start-up

    try:
        spec = read_package(args.package)
        container = Container(image.PROJECT_DIR, IMAGE_PROJECT_DIR, image.pinned_tag())
        run = LocalPipelineRun(
            spec, container, args.pipeline_root or "", pipeline_parameters(spec, args.param or []), args.parallel
        )
        print(f"run {run.run_id}: {len(run.order)} tasks under {run.run_root}", flush=True)
        executions = run.run()
    except (ScheduleError, ValueError, TaskFailed) as error:  # SpecNotSupported is a ValueError
        raise SystemExit(f"error: {error}")
    for name in run.order:
        execution = executions[name]
        ran = f"ran in {execution.seconds:.0f} s (CPU {execution.cpu_seconds:.0f} s)"
        print(f"{name:<30} {'cached' if execution.cached else ran}")


def cmd_image_tag(args: argparse.Namespace) -> None:
    print(image.pinned_tag())


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Adds `compile`, `image-tag`, `run-compiled` and `schedule` to the `pneumonia` parser."""
    comp = commands.add_parser(
        "compile",
        help="compile the pipeline for Kubeflow Pipelines v2 (no cluster needed)",
        description="Compile the pipeline with KubeflowV2DagRunner: the pipeline spec as YAML (--out) and the "
        "PipelineJob JSON beside it (<out stem>.job.json). URIs must be reachable from the "
        "cluster's pods (e.g. gs://). Flags override --config.",
    )
    comp.add_argument("--out", required=True, help="pipeline spec to write, .yaml or .yml")
    comp.add_argument("--config", help="YAML file of run settings (see pipeline/config.py)")
    comp.add_argument(
        "--image",
        help="container image of every task; its tag must be `pneumonia image-tag` "
        "(default: pneumonia-pipeline:<that tag>)",
    )
    comp.add_argument(
        "--root",
        help="run root URI: pipeline root <root>/tfx/<name>, data <root>/data, "
        "serving <root>/serving unless given below",
    )
    comp.add_argument("--pipeline-root", help="URI where the pipeline's artifacts go")
    comp.add_argument("--data", help="prepared TFRecords URI: default of the data_root runtime parameter")
    comp.add_argument("--serving-dir", help="TF Serving base path URI; models go to DIR/<model-name>/<version>/")
    comp.add_argument("--pipeline-name", help="pipeline name (default pneumonia)")
    comp.add_argument("--model-name", help="served model name (default pneumonia)")
    TrainerConfig.add_flags(comp)  # the defaults of the trainer_config parameter: trainer/config.py
    comp.add_argument("--min-auc", type=float, help="validation AUC a model needs to be blessed (default 0.80)")
    comp.add_argument(
        "--beam-arg",
        action="append",
        metavar="ARG",
        help="Beam argument for every component, repeatable (e.g. --beam-arg=--runner=DataflowRunner)",
    )
    comp.add_argument("--trainer-cpu", type=float, help="Trainer pod CPUs (request = limit)")
    comp.add_argument("--trainer-memory-gb", type=float, help="Trainer pod memory in GB (request = limit)")
    comp.add_argument("--trainer-gpus", type=int, help="Trainer pod GPUs")
    comp.add_argument("--trainer-gpu-type", help="accelerator resource name (default nvidia.com/gpu)")
    comp.set_defaults(func=cmd_compile)

    tag = commands.add_parser(
        "image-tag",
        help="print the Kubeflow image tag that pins this working tree's code",
        description="Print <version>-<digest of the code the image runs>: build and push the image under this "
        "tag; `pneumonia compile` refuses any other.",
    )
    tag.set_defaults(func=cmd_image_tag)

    local = commands.add_parser(
        "run-compiled",
        help="run a compiled pipeline spec here, each task as Kubeflow's launcher would",
        description="Execute every task of a compiled spec in dependency order: ExecutorInput, placeholders and "
        "the container's own command as KFP's driver and launcher build them, with this checkout "
        "standing in for the image (its tag must be `pneumonia image-tag`) and KFP's cache under the "
        "pipeline root. Refuses what it cannot run as KFP would (see kubeflow/README.md).",
    )
    local.add_argument("package", help="compiled pipeline spec (pneumonia compile --out)")
    local.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="run parameter, repeatable, as for `pneumonia schedule` (e.g. epochs=2)",
    )
    local.add_argument("--pipeline-root", help="local directory (default: the spec's pipeline root)")
    local.add_argument("--parallel", type=int, default=2, help="tasks run at once (default 2)")
    local.set_defaults(func=cmd_run_compiled)

    sched = commands.add_parser(
        "schedule",
        help="upload a compiled pipeline to Kubeflow Pipelines and run it on a cron schedule",
        description="Upload the package (a new pipeline, or a version named after its content) and create a "
        "recurring run with kfp.Client. The cron expression and parameters are checked first.",
    )
    sched.add_argument("--host", required=True, help="Kubeflow Pipelines API URL, e.g. http://localhost:8080")
    sched.add_argument(
        "--cron",
        required=True,
        help="6-field cron: second minute hour day-of-month month day-of-week, e.g. '0 0 3 * * *'",
    )
    sched.add_argument("--package", default="pipeline.yaml", help="compiled pipeline spec (default pipeline.yaml)")
    sched.add_argument("--experiment", default="pneumonia", help="experiment name (default pneumonia)")
    sched.add_argument("--create-experiment", action="store_true", help="create the experiment if it is missing")
    sched.add_argument("--name", default="pneumonia-scheduled", help="recurring run name (default pneumonia-scheduled)")
    sched.add_argument("--pipeline-name", help="pipeline name on the server (default: the package's)")
    sched.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="run parameter, repeatable: data_root=URI, trainer_config=JSON, or a trainer_config "
        "key such as architecture=densenet121 or epochs=10",
    )
    sched.add_argument("--max-concurrency", type=int, default=1, help="runs allowed at once (default 1)")
    sched.add_argument("--namespace", help="Kubeflow namespace (multi-user deployments)")
    sched.add_argument("--dry-run", action="store_true", help="print the requests instead of sending them")
    sched.set_defaults(func=cmd_schedule)
