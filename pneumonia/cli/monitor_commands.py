"""`pneumonia monitor`: watch a served model from its request logs."""

import argparse
import dataclasses
import sys

from components.threshold_calibrator.prevalence import TRAINING_PRIOR
from pneumonia.monitoring.settings import DEFAULT_WINDOW, ECE_TOLERANCE, EXIT_ALERTS, Limits
from serving.cli import DEFAULT_SERVING_DIR


def cmd_monitor(args: argparse.Namespace) -> None:
    from pneumonia.monitoring import monitor  # keeps TensorFlow out of CLI start-up

    options = monitor.MonitorOptions(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(monitor.MonitorOptions)}
    )
    try:
        sys.exit(monitor.monitor(options))
    except monitor.MonitorError as error:
        raise SystemExit(f"error: {error}")


def add_commands(commands) -> None:
    parser = commands.add_parser(
        "monitor",
        help="watch a served model from its request logs: drift, OOD share, label-free performance estimates",
        description="Read the request logs `pneumonia serve` (logging_config) and the DICOM node (--request-log) "
        "write, cut them into windows and compare each with the served version's validation reference: volume, "
        "OOD and class shares, score drift (Kolmogorov-Smirnov, Jensen-Shannon), image-statistics drift (TFDV), "
        "prevalence (EM) and estimated accuracy, sensitivity and specificity (CBPE); with --labels, the realised "
        f"ones. Prints a line per window and per alert. Exit code 0: no alert; {EXIT_ALERTS}: alerts; 1: an "
        "input could not be read.",
    )
    parser.add_argument(
        "--logs",
        required=True,
        metavar="PREFIX",
        help="the logging_config's filename_prefix (reads PREFIX.*.tfrecord), or a folder of log files; gs:// works",
    )
    parser.add_argument(
        "--reference",
        required=True,
        metavar="DATA",
        help="prepared data whose eval split is the validation reference (as `pneumonia calibrate --unlabeled`), "
        "or a reference .json written by --save-reference",
    )
    parser.add_argument(
        "--serving-dir",
        default=DEFAULT_SERVING_DIR,
        help=f"where the logged version lies, to score the reference with (default {DEFAULT_SERVING_DIR})",
    )
    parser.add_argument("--model-name", default="pneumonia", help="served model name (default pneumonia)")
    parser.add_argument("--version", type=int, help="the version to watch (default: the newest in the logs)")
    parser.add_argument(
        "--window",
        default=DEFAULT_WINDOW,
        help=f"hour, day or a number N: windows of N requests (default {DEFAULT_WINDOW})",
    )
    parser.add_argument(
        "--since", help="first answer time to read: ISO 8601 (2026-12-01T06:00Z) or a duration before now (24h, 7d)"
    )
    parser.add_argument("--until", help="answer time to stop before, as --since")
    parser.add_argument(
        "--labels",
        metavar="CSV",
        help="CSV with columns id (the logged request id, or the hashed SOP Instance UID) and label (NORMAL or "
        "PNEUMONIA): realised sensitivity and specificity beside the estimates",
    )
    parser.add_argument(
        "--schema",
        help="TFDV schema whose drift comparators hold the image-statistics thresholds (default: the one shipped "
        "in pneumonia/monitoring/drift_schema.pbtxt)",
    )
    parser.add_argument("--out", metavar="DIR", help="write alerts.jsonl, windows.jsonl and report.html here")
    parser.add_argument(
        "--export-labelled",
        metavar="DIR",
        help="with --labels: write the labelled images the log holds (logged with tfrecord_with_images) as a "
        "site folder, DIR/NORMAL/ and DIR/PNEUMONIA/, for `pneumonia prepare`",
    )
    parser.add_argument("--save-reference", metavar="FILE.json", help="save the reference for later runs")
    parser.add_argument(
        "--pushgateway", metavar="URL", help="push the last window's figures to this Prometheus Pushgateway"
    )
    parser.add_argument(
        "--alpha",
        type=float,
        default=Limits.alpha,
        help=f"score drift: KS p-value below this (default {Limits.alpha})...",
    )
    parser.add_argument(
        "--js-distance",
        type=float,
        default=Limits.js_distance,
        help=f"...and a Jensen-Shannon distance of the score histograms at least this (default {Limits.js_distance})",
    )
    parser.add_argument(
        "--max-ood-share",
        type=float,
        default=Limits.max_ood_share,
        help=f"alert above this share of OOD-flagged images (default {Limits.max_ood_share})",
    )
    parser.add_argument(
        "--sensitivity-floor",
        type=float,
        help="alert when the estimated (or realised) sensitivity falls below this (default: X of a sensitivity:X "
        "threshold policy, else none)",
    )
    parser.add_argument(
        "--ece-tolerance",
        type=float,
        default=ECE_TOLERANCE,
        help=f"above this ECE on validation, Platt scaling fitted there maps the probabilities before the "
        f"estimates (default {ECE_TOLERANCE})",
    )
    parser.add_argument(
        "--model-prior",
        type=float,
        default=TRAINING_PRIOR,
        help="the prior the probabilities assume when validation has no labels (default 0.5)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap intervals")
    parser.set_defaults(func=cmd_monitor)
