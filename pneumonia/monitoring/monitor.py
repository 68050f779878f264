"""`pneumonia monitor`: read the request logs, measure each window against the served version's reference, and
write what was found.

Everything is computed before anything is written, so a bad input leaves no output behind; each output file
appears whole (written aside, then renamed). Exit code: settings.EXIT_OK, or EXIT_ALERTS when a window raised
an alert.
"""

import dataclasses
import datetime
import json
import os
import re
import time
from typing import Dict, List, Optional

import pandas as pd
import tensorflow as tf
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from components.threshold_calibrator.prevalence import TRAINING_PRIOR
from pneumonia.monitoring import drift, labels, page, reference, windows
from pneumonia.monitoring.logs import MonitorError, open_files, read_logs
from pneumonia.monitoring.settings import DEFAULT_WINDOW, ECE_TOLERANCE, EXIT_ALERTS, EXIT_OK, Limits
from trainer import threshold

MONITOR_JOB = "pneumonia-monitor"
DURATION_SECONDS = {"m": 60, "h": 3600, "d": 86400}


@dataclasses.dataclass(frozen=True)
class MonitorOptions:
    logs: str  # the logging_config's filename_prefix, or a folder of log files
    reference: str  # prepared data (its validation split is scored) or a JSON written by --save-reference
    serving_dir: str  # where the answering version lies, to score the reference with
    model_name: str = "pneumonia"
    version: Optional[int] = None  # default: the newest version in the logs
    window: str = DEFAULT_WINDOW
    since: Optional[str] = None
    until: Optional[str] = None
    labels: Optional[str] = None
    schema: Optional[str] = None  # default: drift.SCHEMA_FILE
    out: Optional[str] = None
    export_labelled: Optional[str] = None
    save_reference: Optional[str] = None
    pushgateway: Optional[str] = None
    alpha: float = Limits.alpha
    js_distance: float = Limits.js_distance
    max_ood_share: float = Limits.max_ood_share
    sensitivity_floor: Optional[float] = None  # default: the target of a `sensitivity:X` threshold policy
    ece_tolerance: float = ECE_TOLERANCE
    model_prior: float = TRAINING_PRIOR
    seed: int = 0


def _epoch(text: Optional[str], flag: str) -> Optional[float]:
    """An ISO 8601 time (UTC unless it says otherwise), or a duration before now: 90m, 24h, 7d."""
    if text is None:
        return None
    if re.fullmatch(r"\d+[mhd]", text):
        return time.time() - int(text[:-1]) * DURATION_SECONDS[text[-1]]
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise MonitorError(f"{flag} {text!r} is neither an ISO 8601 time (2026-12-01T06:00Z) nor a duration (24h)")
    return (moment if moment.tzinfo else moment.replace(tzinfo=datetime.timezone.utc)).timestamp()


def select(records: pd.DataFrame, options: MonitorOptions, notes: List[str]) -> pd.DataFrame:
    """The images of the requested time range answered by one version (the newest unless --version)."""
    since, until = _epoch(options.since, "--since"), _epoch(options.until, "--until")
    within = records[(records.time >= (since or 0)) & (records.time < (until or float("inf")))]
    if within.empty:
        raise MonitorError(
            f"no logged request of {options.model_name} between {options.since or 'the first'} and "
            f"{options.until or 'the last'} (the logs span {_iso(records.time.min())} to {_iso(records.time.max())})"
        )
    versions = sorted(int(v) for v in within.version.unique())
    version = options.version if options.version is not None else versions[-1]
    if version not in versions:
        raise MonitorError(f"no logged request answered by version {version}; the logs hold versions {versions}")
    others = within[within.version != version]
    if len(others):
        notes.append(
            f"{len(others)} images answered by other versions {sorted(set(others.version) - {version})} left out"
        )
    return within[within.version == version]


def _iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(int(seconds), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_reference(options: MonitorOptions, version: int) -> reference.Reference:
    if options.reference.endswith(".json"):
        loaded = reference.load(options.reference)
        if (loaded.model, loaded.version) != (options.model_name, version):
            raise MonitorError(
                f"{options.reference} is the reference of {loaded.model} version {loaded.version}, the logs were "
                f"answered by {options.model_name} version {version}: compute it again with --reference DATA"
            )
        return loaded
    try:
        return reference.compute(options.serving_dir, options.model_name, version, options.reference)
    except ValueError as error:  # not a model exported by this trainer
        raise MonitorError(str(error))
    except tf.errors.OpError as error:  # an unreadable validation split or SavedModel
        raise MonitorError(f"cannot compute the reference from {options.reference}: {error.message.splitlines()[0]}")


def sensitivity_floor(options: MonitorOptions, policy: str) -> Optional[float]:
    if options.sensitivity_floor is not None:
        return options.sensitivity_floor
    try:
        kind, value = threshold.parse(policy)
    except ValueError:
        return None
    return value if kind == "sensitivity" else None


def _write(folder: str, files: Dict[str, str]) -> None:
    """Each file written aside, then renamed into place."""
    tf.io.gfile.makedirs(folder)
    for name, text in files.items():
        staging = os.path.join(folder, f".{name}.partial-{os.getpid()}")
        with tf.io.gfile.GFile(staging, "w") as f:
            f.write(text)
        tf.io.gfile.rename(staging, os.path.join(folder, name), overwrite=True)


def gauges(last: windows.Window, floor: Optional[float]) -> Dict[str, Optional[float]]:
    """The last window's figures the alerting rules read (serving/k8s/monitoring/), by gauge name."""
    return {
        "window_images": last.images,
        "window_end_timestamp_seconds": last.end,
        "ood_share": last.ood_share,
        "score_ks_statistic": last.score and last.score.ks_statistic,
        "score_ks_pvalue": last.score and last.score.ks_pvalue,
        "score_js_distance": last.score and last.score.js_distance,
        "image_drift_features": sum(feature.drifted for feature in last.features),
        "prevalence": last.prevalence and last.prevalence[0],
        "estimated_sensitivity": last.estimated and last.estimated.sensitivity,
        "estimated_specificity": last.estimated and last.estimated.specificity,
        "realised_sensitivity": last.realised and last.realised.sensitivity,
        "sensitivity_floor": floor,
        "alerts": len(last.alerts),
    }


def push(url: str, model: str, version: int, last: windows.Window, floor: Optional[float]) -> None:
    """The last window's gauges, as :pneumonia:monitor:<name>, to a Prometheus Pushgateway."""
    registry = CollectorRegistry()
    for name, value in gauges(last, floor).items():
        if value is not None:
            gauge = Gauge(f":pneumonia:monitor:{name}", name, ("model_name", "model_version"), registry=registry)
            gauge.labels(model, str(version)).set(value)
    try:
        push_to_gateway(url, job=MONITOR_JOB, registry=registry, grouping_key={"model_name": model})
    except OSError as error:
        raise MonitorError(f"cannot push to the Pushgateway {url}: {error}")


def summary(window: windows.Window) -> str:
    parts = [f"{window.images} images", f"OOD {page.number(window.ood_share, 2)}"]
    parts.append(f"PNEUMONIA {window.class_shares.get('PNEUMONIA', 0.0):.2f}")
    if window.score:
        parts.append(f"KS D {window.score.ks_statistic:.3f} (p {window.score.ks_pvalue:.2g})")
        parts.append(f"JS {window.score.js_distance:.3f}")
        parts.append("drifted: " + (", ".join(f.feature for f in window.features if f.drifted) or "-"))
    if window.prevalence:
        parts.append("prevalence {:.2f} [{:.2f}, {:.2f}]".format(*window.prevalence))
    for name, figures in (("estimated", window.estimated), ("realised", window.realised)):
        if figures:
            parts.append(
                f"{name} sensitivity {page.number(figures.sensitivity)} specificity "
                f"{page.number(figures.specificity)} ({figures.images} images)"
            )
    return f"{window.name}: " + ", ".join(parts)


def monitor(options: MonitorOptions) -> int:
    """Runs the whole check, prints a line per window and per alert, writes the outputs; the exit code."""
    window = windows.parse_window(options.window)
    notes: List[str] = []
    unread = open_files(options.logs)
    if unread:
        notes.append(f"{unread} log file(s) still open for writing were not read")
    logged = read_logs(options.logs, options.model_name)
    known = labels.read_labels(options.labels, logged.request_id) if options.labels else None
    records = select(logged, options, notes)
    ref = load_reference(options, int(records.version.iloc[0]))
    calibration = reference.calibration(ref, options.ece_tolerance, options.model_prior)
    limits = Limits(options.alpha, options.js_distance, options.max_ood_share, sensitivity_floor(options, ref.policy))
    image_drift = drift.ImageDrift(ref.statistics, options.schema or drift.SCHEMA_FILE)
    measured = windows.analyse(records, window, ref, calibration, image_drift, limits, known, options.seed)
    if options.export_labelled:
        if known is None:
            raise MonitorError("--export-labelled needs --labels: only labelled images make a site folder")
        written, without = labels.export_labelled(records, known, options.export_labelled)
        notes.append(
            f"{written} labelled images exported to {options.export_labelled}"
            + (f"; {without} labelled images were logged without their image" if without else "")
        )
    alerts = [alert for w in measured for alert in w.alerts]
    if options.out:
        probabilities = [group.probability.to_numpy(dtype=float) for _, group in windows.split(records, window)]
        _write(
            options.out,
            {
                "alerts.jsonl": "".join(json.dumps(alert) + "\n" for alert in alerts),
                "windows.jsonl": "".join(json.dumps(w.to_dict()) + "\n" for w in measured),
                "report.html": page.render(
                    options.model_name, ref, calibration, measured, probabilities, limits, notes
                ),
            },
        )
    if options.save_reference:
        _write(
            os.path.dirname(options.save_reference) or ".", {os.path.basename(options.save_reference): ref.to_json()}
        )
    if options.pushgateway:
        push(options.pushgateway, options.model_name, ref.version, measured[-1], limits.sensitivity_floor)
    print(f"{options.model_name} version {ref.version}: {page.calibration_note(calibration, ref)}")
    for line in notes + [summary(w) for w in measured]:
        print(line)
    for alert in alerts:
        print(f"ALERT {alert['window']}: {alert['reason']}")
    return EXIT_ALERTS if alerts else EXIT_OK
