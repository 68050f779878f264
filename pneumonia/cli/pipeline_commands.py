"""`pneumonia prepare` and `pneumonia run`: image folders into TFRecords, and one run of the pipeline."""

import argparse
import os

from pipeline.config import RunConfig, absolute_uri
from trainer.config import TrainerConfig


def _prepare(sources, out: str, **options) -> dict:
    from pneumonia.data import audit, prepare  # keeps TensorFlow out of CLI start-up
    from pneumonia.data import sources as data_sources

    try:
        report = prepare.prepare([data_sources.Source.parse(s) for s in sources], out, **options)
    except data_sources.PrepareError as error:
        raise SystemExit(f"error: {error}")
    print(audit.summary(report))
    print(f"prepared TFRecords and {audit.REPORT_NAME} in {out}")
    return report


def cmd_prepare(args: argparse.Namespace) -> None:
    _prepare(
        args.sources,
        absolute_uri(args.out),
        eval_fraction=args.eval_fraction,
        seed=args.seed,
        overwrite=args.overwrite,
        max_bad_fraction=args.max_bad_fraction,
        strict=args.strict,
        beam_args=args.beam_arg,
        patient_salt=args.patient_salt or None,
        allow_lateral=args.allow_lateral,
        calibration_from=args.calibration_from,
        calibration_size=args.calibration_size,
    )


def cmd_run(args: argparse.Namespace) -> None:
    from pneumonia.data import audit, sources  # keeps TensorFlow out of CLI start-up

    try:
        config = RunConfig.load(
            args.config,
            root=args.root,
            serving_dir=args.serving_dir,
            runner=args.runner,
            model_name=args.model_name,
            min_auc=args.min_auc,
            beam_args=args.beam_arg or None,
            warm_start=args.warm_start,
            site_min_sensitivity=args.site_min_sensitivity,
            site_min_specificity=args.site_min_specificity,
            gate_on_lower_bound=args.gate_on_lower_bound,
            non_inferiority_margin=args.non_inferiority_margin,
            **TrainerConfig.overrides(args),
        )
        config.site_gate()  # a bad gate setting fails before anything runs
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}")
    data = args.data or sources.shared_data_dir()
    if data is None:
        raise SystemExit(f"error: no --data given and no ../shared/data beside the checkout; {sources.KAGGLE_HINT}")
    data = absolute_uri(data)
    if audit.is_prepared(data):
        config.data = data
    else:
        if not os.path.isdir(data):
            raise SystemExit(f"error: --data {data} does not exist; {sources.KAGGLE_HINT}")
        try:
            found = sources.sources_for(data)
        except sources.PrepareError as error:
            raise SystemExit(f"error: {error}")
        _prepare(
            found,
            config.data,
            seed=config.trainer.seed,
            calibration_from=args.calibration_from,
            calibration_size=args.calibration_size,
        )
    run_and_summarize(config)


def run_and_summarize(config) -> None:
    """Runs the pipeline on the prepared data of `config` (every split it has), then prints where the model,
    evaluation, report and push went, the metrics table and what the ThresholdCalibrator did."""
    from pneumonia.cli.summary import run_summary  # keeps TensorFlow out of CLI start-up
    from pneumonia.data import audit
    from pneumonia.runs import runner

    config.splits = audit.prepared_splits(config.data)
    print(run_summary(runner.run(config), config))


def add_commands(commands) -> None:
    prep = commands.add_parser(
        "prepare",
        help="convert image folders into TFRecords for the pipeline",
        description="Convert image folders into gzipped TFRecords, one folder per split, plus prepare_report.json.",
    )
    prep.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="NAME=PATH: a folder with train/ [val/] test/ (Kaggle layout) keeps its splits; "
        "a folder with only NORMAL/ and PNEUMONIA/ becomes an evaluation-only split NAME; "
        "calibration:NAME=PATH makes such a folder the site's calibration split",
    )
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument(
        "--eval-fraction",
        type=float,
        default=0.1,
        help="share of train carved (by patient) as validation when val/ is too small (default 0.1)",
    )
    prep.add_argument("--seed", type=int, default=42, help="seed of the carve and the record order")
    prep.add_argument("--overwrite", action="store_true", help="replace a different dataset already in --out")
    prep.add_argument(
        "--max-bad-fraction",
        type=float,
        default=0.01,
        help="fail when more than this share of files is quarantined (default 0.01)",
    )
    prep.add_argument(
        "--strict",
        action="store_true",
        help="fail on identical files across splits or a patient in both train and eval",
    )
    prep.add_argument(
        "--calibration-from",
        metavar="SPLIT",
        help="carve the site's labelled calibration sample from this split (test or an "
        "evaluation-only split): whole patients, stratified by source and label, seeded; "
        "the carved images leave SPLIT. Or give a calibration:NAME=PATH SOURCE instead",
    )
    prep.add_argument(
        "--calibration-size",
        type=int,
        default=0,
        metavar="N",
        help="images to carve with --calibration-from (whole patients, so about N)",
    )
    prep.add_argument(
        "--beam-arg",
        action="append",
        metavar="ARG",
        help="Beam pipeline argument, repeatable (e.g. --beam-arg=--runner=DataflowRunner)",
    )
    prep.add_argument(
        "--patient-salt",
        default=os.environ.get("PNEUMONIA_SALT"),
        help="key of the hash DICOM PatientIDs and UID-shaped file names are stored as "
        "(default $PNEUMONIA_SALT, else "
        "the public built-in salt, which only hides IDs from a casual reader: set a secret one)",
    )
    prep.add_argument(
        "--allow-lateral",
        action="store_true",
        help="keep lateral DICOM views (refused by default: the model reads frontal films)",
    )
    prep.set_defaults(func=cmd_prepare)

    run = commands.add_parser(
        "run",
        help="run the TFX pipeline: validate, train, evaluate, push",
        description="Build and run the TFX pipeline. Flags override --config.",
    )
    run.add_argument("--config", help="YAML file of run settings (see pipeline/config.py)")
    run.add_argument(
        "--data",
        help="prepared TFRecords folder, or a raw image folder (Kaggle layout) to prepare "
        "first; default: ../shared/data beside the checkout",
    )
    run.add_argument("--root", help="run root: pipeline outputs, ML Metadata, prepared data (default ~/pneumonia-runs)")
    run.add_argument("--serving-dir", help="TF Serving base path; models go to DIR/<model-name>/<version>/")
    run.add_argument("--model-name", help="served model name (default pneumonia)")
    TrainerConfig.add_flags(run)  # --architecture, --image-size, --epochs, ...: trainer/config.py
    run.add_argument(
        "--warm-start",
        action="store_true",
        default=None,
        help="initialise from the latest trained model of the same architecture",
    )
    run.add_argument("--min-auc", type=float, help="validation AUC a model needs to be blessed (default 0.80)")
    run.add_argument(
        "--calibration-from",
        metavar="SPLIT",
        help="when --data is raw images: carve the calibration split from SPLIT (see prepare)",
    )
    run.add_argument(
        "--calibration-size",
        type=int,
        default=0,
        metavar="N",
        help="with --calibration-from: images to carve (whole patients)",
    )
    run.add_argument(
        "--site-min-sensitivity",
        type=float,
        metavar="X",
        help="site gate: no push unless sensitivity at the served threshold on the calibration split is at least X",
    )
    run.add_argument(
        "--site-min-specificity", type=float, metavar="X", help="site gate: the same bound for specificity"
    )
    run.add_argument(
        "--gate-on-lower-bound",
        action="store_true",
        default=None,
        help="judge the site gate on the lower 95%% confidence bound (the run's kind of interval), not the point "
        "estimate",
    )
    run.add_argument(
        "--non-inferiority-margin",
        type=float,
        metavar="M",
        help="no push unless the paired-bootstrap lower 95%% bound of (new AUC - baseline AUC) on the test split "
        "is at least -M (e.g. 0.02); a first run, with no baseline, is not judged by it",
    )
    run.add_argument("--runner", choices=["local", "beam"], help="orchestrator (default local)")
    run.add_argument(
        "--beam-arg",
        action="append",
        metavar="ARG",
        help="Beam pipeline argument for the data components, repeatable (e.g. --beam-arg=--runner=...)",
    )
    run.set_defaults(func=cmd_run)
