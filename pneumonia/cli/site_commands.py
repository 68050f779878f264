"""`pneumonia calibrate` and `pneumonia ensemble`: fit a deployed model to a site, and average several models."""

import argparse
import dataclasses

from components.threshold_calibrator.prevalence import TRAINING_PRIOR
from pipeline.config import RunConfig
from pneumonia.cli.pipeline_commands import run_and_summarize
from serving.cli import DEFAULT_SERVING_DIR


def cmd_calibrate(args: argparse.Namespace) -> None:
    from pneumonia.site import calibrate  # keeps TensorFlow out of CLI start-up

    options = calibrate.SiteOptions(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(calibrate.SiteOptions)}
    )
    try:
        calibrate.calibrate(options)
    except calibrate.CalibrateError as error:
        raise SystemExit(f"error: {error}")


def cmd_ensemble(args: argparse.Namespace) -> None:
    from pneumonia.data import audit  # keeps TensorFlow out of CLI start-up
    from pneumonia.runs.store import RunLookupError, latest_evaluations
    from pneumonia.site import ensemble

    try:
        config = RunConfig.load(
            args.config,
            root=args.root,
            serving_dir=args.serving_dir,
            model_name=args.model_name,
            threshold_policy=args.threshold_policy,
        )
        members = ensemble.ensemble_members(
            latest_evaluations(config.metadata_path), args.architectures, args.include_unblessed
        )
    except (OSError, ValueError, RunLookupError) as error:
        raise SystemExit(f"error: {error}")
    if not audit.is_prepared(config.data):
        raise SystemExit(f"error: no prepared data at {config.data}: run `pneumonia run` first")
    print("members: " + ", ".join(f"{m['architecture']} ({m['image_size']} px)" for m in members))
    run_and_summarize(ensemble.ensemble_config(config, members))


def add_commands(commands) -> None:
    parser = commands.add_parser(
        "calibrate",
        help="set a deployed model's threshold for a site, as a new version",
        description="Choose a deployed model's threshold on a site's labelled images (--site FOLDER with NORMAL/ "
        "and PNEUMONIA/), or estimate the site's prevalence from unlabelled images (--unlabeled "
        "FOLDER) and, with --adjust-prior, move the threshold to it. Writes a new version (same "
        "weights, new threshold) atomically; --label points a version label at it.",
    )
    parser.add_argument(
        "--serving-dir",
        default=DEFAULT_SERVING_DIR,
        help=f"TF Serving base path holding <model-name>/<version>/ (default {DEFAULT_SERVING_DIR})",
    )
    parser.add_argument("--model-name", default="pneumonia", help="served model name (default pneumonia)")
    parser.add_argument("--version", type=int, help="version to calibrate (default: the latest)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--site", metavar="FOLDER", help="labelled site images: FOLDER/NORMAL/, FOLDER/PNEUMONIA/")
    source.add_argument("--unlabeled", metavar="FOLDER", help="unlabelled site images (any layout)")
    parser.add_argument(
        "--policy",
        help="threshold policy on the site's images: youden, sensitivity:X, cost:R, "
        "... (default: the one the model was trained with)",
    )
    parser.add_argument("--label", metavar="NAME", help="version label to point at the new version (e.g. site-a)")
    parser.add_argument(
        "--model-config-file",
        metavar="FILE",
        help="with --label: the model server's ModelServerConfig file, updated in place",
    )
    parser.add_argument(
        "--reference",
        metavar="DATA",
        help="with --unlabeled: prepared TFRecords whose eval split is the validation reference "
        "(default ~/pneumonia-runs/data)",
    )
    parser.add_argument(
        "--adjust-prior",
        action="store_true",
        help="with --unlabeled: write a version whose threshold follows the estimated prevalence",
    )
    parser.add_argument(
        "--model-prior",
        type=float,
        default=TRAINING_PRIOR,
        help="with --unlabeled: the pneumonia prior the model's probabilities assume (default 0.5: "
        "training weights the classes equally)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    parser.set_defaults(func=cmd_calibrate)

    ensemble = commands.add_parser(
        "ensemble",
        help="build, evaluate and push one model averaging the latest models of several architectures",
        description="Average the logits of the latest evaluated model of each architecture under --root (blessed "
        "ones, unless --include-unblessed) in one SavedModel; the pipeline chooses its threshold on "
        "validation, evaluates it against the last blessed model and pushes it if blessed.",
    )
    ensemble.add_argument("--root", help="run root whose models become members (default ~/pneumonia-runs)")
    ensemble.add_argument("--config", help="YAML run settings (threshold policy, blessing bounds, model name)")
    ensemble.add_argument(
        "--architectures",
        type=lambda text: [name for name in text.split(",") if name],
        help="comma-separated member architectures (default: every evaluated one)",
    )
    ensemble.add_argument("--include-unblessed", action="store_true", help="also use members that were not blessed")
    ensemble.add_argument("--serving-dir", help="TF Serving base path (default <root>/serving)")
    ensemble.add_argument("--model-name", help="served model name (default pneumonia)")
    ensemble.add_argument("--threshold-policy", help="how the ensemble's threshold is chosen on validation")
    ensemble.set_defaults(func=cmd_ensemble)
