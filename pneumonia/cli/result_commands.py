"""`pneumonia report`, `compare` and `errors`: read a run root's results back, as text or into docs/RESULTS.md."""

import argparse
import os
from typing import Optional

from pipeline.config import RunConfig
from pneumonia.analysis import generated


def _config(args: argparse.Namespace) -> RunConfig:
    return RunConfig(root=args.root) if args.root else RunConfig()


def cmd_report(args: argparse.Namespace) -> None:
    from pneumonia.analysis import report  # keeps TensorFlow out of CLI start-up
    from pneumonia.runs.store import RunLookupError

    config = _config(args)
    out = os.path.abspath(args.out) if args.out else os.path.join(config.root, "reports")
    try:
        print(
            report.write_report(
                config.metadata_path, args.pipeline_name or config.pipeline_name, out, args.run, args.max_images
            )
        )
    except RunLookupError as error:
        raise SystemExit(f"error: {error}")


def cmd_compare(args: argparse.Namespace) -> None:
    from pneumonia.analysis import ablation, compare  # keeps TensorFlow out of CLI start-up
    from pneumonia.analysis.tables import format_rows
    from pneumonia.runs.store import RunLookupError

    metadata_path = _config(args).metadata_path
    markdown = args.markdown or bool(args.into)
    try:
        if args.ablation or args.targets:
            text = format_rows(ablation.lungs_rows(metadata_path, args.ablation, args.baseline), markdown)
        else:
            text = compare.compare(
                metadata_path, markdown=markdown, policies=args.policies, kshot=args.kshot, ood=args.ood
            )
        _print_or_fill(text, args.into, args.section)
    except (RunLookupError, OSError, ValueError) as error:
        raise SystemExit(f"error: {error}")


def cmd_errors(args: argparse.Namespace) -> None:
    from pneumonia.analysis import errors  # keeps TensorFlow out of CLI start-up
    from pneumonia.runs.store import RunLookupError

    try:
        _print_or_fill(
            errors.errors_report(
                _config(args).metadata_path, args.split, args.architecture, args.top, args.markdown or bool(args.into)
            ),
            args.into,
            args.section,
        )
    except (RunLookupError, OSError, ValueError) as error:
        raise SystemExit(f"error: {error}")


def _print_or_fill(text: str, into: Optional[str], section: str) -> None:
    if into:
        generated.replace_generated(into, text, section)
        print(f"updated {into}")
    else:
        print(text)


def _add_into(parser, default_section: str = "") -> None:
    parser.add_argument(
        "--into",
        metavar="FILE",
        help="write Markdown into FILE between its generated-section markers (e.g. "
        "docs/RESULTS.md), leaving the rest of FILE as it is",
    )
    parser.add_argument(
        "--section",
        default=default_section,
        help=f"with --into: the markers' name (default {default_section or 'none'})",
    )


def add_commands(commands) -> None:
    """`report`, `compare` and `errors` subcommands on the `pneumonia` CLI's subparsers."""
    report = commands.add_parser(
        "report",
        help="regenerate the HTML evaluation report of a run",
        description="Regenerate the evaluation report (figures, per-slice metrics, "
        "Grad-CAM, model card) of the latest run, or of --run, and print "
        "the path of its index.html.",
    )
    report.add_argument("--root", help="run root (default ~/pneumonia-runs)")
    report.add_argument("--out", help="where reports go, one folder per run (default <root>/reports)")
    report.add_argument("--run", help="pipeline run id (default: the latest run)")
    report.add_argument("--pipeline-name", help="pipeline name (default pneumonia)")
    report.add_argument(
        "--max-images",
        type=int,
        metavar="N",
        help="images scored per split for the curves and Grad-CAM panels (default 200; larger covers whole splits)",
    )
    report.set_defaults(func=cmd_report)

    comparison = commands.add_parser(
        "compare",
        help="compare the latest evaluation of every architecture",
        description="Print two tables: per architecture run under --root, how its "
        "latest evaluated model was trained (cost, threshold chosen on "
        "validation), then its TFMA metrics per split and per source "
        "(at the tuned threshold and at 0.5).",
    )
    comparison.add_argument("--root", help="run root (default ~/pneumonia-runs)")
    comparison.add_argument("--markdown", action="store_true", help="print Markdown tables")
    comparison.add_argument(
        "--policies",
        action="store_true",
        help="add the threshold-policy table: every policy chosen on validation, applied to "
        "test and external (scores each model again: a minute or more per model)",
    )
    comparison.add_argument(
        "--kshot",
        action="store_true",
        help="print only the k-shot calibration table: each model's threshold chosen on k = 20, 50, 100 "
        "labelled test and external images (20 seeded patient-grouped draws), evaluated on "
        "the rest, next to its validation threshold (scores each model again)",
    )
    comparison.add_argument(
        "--ood",
        action="store_true",
        help="add the out-of-distribution table: per split, the share of images each model's "
        "guard flags and its error rate among flagged and other images (scores each "
        "model again)",
    )
    comparison.add_argument(
        "--ablation",
        action="append",
        metavar="LABEL=ROOT[:ARCHITECTURE]",
        help="print only the ablation table, one row per run root (repeatable, in row order; "
        "the first is the baseline, whose test false positives every row is explained on "
        "again for the border-share column)",
    )
    comparison.add_argument(
        "--targets",
        action="store_true",
        help="print only issue 12's targets table: the model under --root that the written rule "
        "picks (lowest validation Brier; within 0.002, lower validation border share), "
        "against each target",
    )
    comparison.add_argument(
        "--baseline",
        metavar="LABEL=ROOT[:ARCHITECTURE]",
        help="with --targets: the recipe the border target compares against",
    )
    _add_into(comparison)
    comparison.set_defaults(func=cmd_compare)

    mistakes = commands.add_parser(
        "errors",
        help="a model's mistakes at its threshold, by file-name family",
        description="Score a split with the latest evaluated model of each architecture "
        "(or --architecture) and print its error rate per file-name family "
        "(NORMAL#-IM, IM, person#_virus, rsna_Normal, ...) and class at "
        "the model's own threshold, then its most confident mistakes.",
    )
    mistakes.add_argument("--root", help="run root (default ~/pneumonia-runs)")
    mistakes.add_argument("--architecture", help="only this architecture")
    mistakes.add_argument("--split", default="test", help="split to analyse (default test)")
    mistakes.add_argument("--top", type=int, default=10, help="most confident mistakes listed (default 10)")
    mistakes.add_argument("--markdown", action="store_true", help="print Markdown tables")
    _add_into(mistakes, default_section="errors")
    mistakes.set_defaults(func=cmd_errors)
