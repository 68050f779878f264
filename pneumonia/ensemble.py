"""`pneumonia ensemble`: one model averaging the latest trained models of several architectures under a root.

The ensemble is the registry's `ensemble` architecture (trainer/models.py): the pipeline builds it from the
members' Keras weights, chooses its own threshold on validation, and evaluates, blesses and pushes it like
any other model. Members are picked by a rule fixed before any figure is seen: the latest evaluated model of
each architecture (blessed ones only, unless asked), never by test or external results.
"""
import argparse
import dataclasses
from typing import Dict, List, Optional, Sequence

ENSEMBLE = "ensemble"


def ensemble_members(evaluated: Sequence, architectures: Optional[Sequence[str]] = None,
                     include_unblessed: bool = False) -> List[Dict]:
    """Member specs (architecture, image size, settings, Keras weights file) from `latest_evaluations`."""
    from trainer.task import keras_weights_path

    by_name = {item.architecture: item for item in evaluated if item.architecture != ENSEMBLE}
    wanted = list(architectures) if architectures else sorted(by_name)
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise ValueError(f"no evaluated model of {', '.join(missing)} under this root; evaluated: "
                         f"{', '.join(sorted(by_name)) or 'none'}")
    chosen = [by_name[name] for name in wanted if include_unblessed or by_name[name].blessed]
    if len(chosen) < 2:
        raise ValueError(f"an ensemble needs at least 2 members; blessed models of: "
                         f"{', '.join(name for name in wanted if by_name[name].blessed) or 'none'} "
                         "(--include-unblessed to use the others)")
    return [{"architecture": item.architecture, "image_size": item.image_size,
             "model_config": item.model.get("model_config", {}),
             "weights": keras_weights_path(f"{item.model_uri}/Format-Serving")} for item in chosen]


def cmd_ensemble(args: argparse.Namespace) -> None:
    from pipeline.config import RunConfig
    from pneumonia import prepare
    from pneumonia.cli import run_and_summarize
    from pneumonia.report import ReportLookupError, latest_evaluations

    try:
        config = RunConfig.load(args.config, root=args.root, serving_dir=args.serving_dir,
                                model_name=args.model_name, threshold_policy=args.threshold_policy)
        members = ensemble_members(latest_evaluations(config.metadata_path), args.architectures,
                                   args.include_unblessed)
    except (OSError, ValueError, ReportLookupError) as error:
        raise SystemExit(f"error: {error}")
    if not prepare.is_prepared(config.data):
        raise SystemExit(f"error: no prepared data at {config.data}: run `pneumonia run` first")
    image_size = max(member["image_size"] for member in members)  # each member resizes to its own
    config.trainer = dataclasses.replace(config.trainer, architecture=ENSEMBLE, model_config={"members": members},
                                         image_size=image_size)
    config.warm_start = False
    print("members: " + ", ".join(f"{m['architecture']} ({m['image_size']} px)" for m in members))
    run_and_summarize(config)


def add_command(commands) -> None:
    ensemble = commands.add_parser(
        "ensemble", help="build, evaluate and push one model averaging the latest models of several architectures",
        description="Average the logits of the latest evaluated model of each architecture under --root (blessed "
                    "ones, unless --include-unblessed) in one SavedModel; the pipeline chooses its threshold on "
                    "validation, evaluates it against the last blessed model and pushes it if blessed.")
    ensemble.add_argument("--root", help="run root whose models become members (default ~/pneumonia-runs)")
    ensemble.add_argument("--config", help="YAML run settings (threshold policy, blessing bounds, model name)")
    ensemble.add_argument("--architectures", type=lambda text: [name for name in text.split(",") if name],
                          help="comma-separated member architectures (default: every evaluated one)")
    ensemble.add_argument("--include-unblessed", action="store_true", help="also use members that were not blessed")
    ensemble.add_argument("--serving-dir", help="TF Serving base path (default <root>/serving)")
    ensemble.add_argument("--model-name", help="served model name (default pneumonia)")
    ensemble.add_argument("--threshold-policy", help="how the ensemble's threshold is chosen on validation")
    ensemble.set_defaults(func=cmd_ensemble)
