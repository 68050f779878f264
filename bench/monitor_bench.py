"""Monitoring measured: the label-free estimates next to the realised figures, and how many adult films it takes
before drift is caught.

Serves the model with `pneumonia serve`'s request log on (an in-process ModelServer, logging_config sampling
every request), sends the full Kermany test set, external/ and the RSNA site over gRPC, each set in its own
shuffled order, then runs the monitor's analysis on the log with each set as its own window and the class
folders as labels: OOD share, score and image drift, EM prevalence against the true one, and accuracy,
sensitivity and specificity at the served threshold, estimated (CBPE) and realised.
Alarm latency: the Kermany test films followed by one adult set as one stream, windows of --window requests
ending every --step requests: the adult films sent when the first window raises a drift alarm (image or score),
and the false alarms among the windows of Kermany films only.

The model: the newest version pushed under --root (<root>/serving/<model>), its reference the validation split
of <root>/data, as `pneumonia run` leaves them. Without one the script says what it needs; --tiny instead
exports the tests' tiny untrained CNN (its OOD guard fitted on Kermany train films) with a reference of
Kermany train films, which measures the machinery, not a model.
Usage: .venv/bin/python bench/monitor_bench.py --root ~/pneumonia-runs [--into docs/RESULTS.md --section monitor]
       .venv/bin/python bench/monitor_bench.py --tiny [--window 32 --step 4]
"""

import argparse
import glob
import os
import random
import sys
import tempfile
import time
from concurrent import futures
from typing import Dict, List, Tuple

import pandas as pd
import tensorflow as tf

from pipeline.config import RunConfig
from pneumonia.analysis.generated import replace_generated, shown_path
from pneumonia.data.sources import LABELS, shared_data_dir
from pneumonia.monitoring import drift, reference, windows
from pneumonia.monitoring.logs import read_logs
from pneumonia.monitoring.settings import Limits
from serving import config
from serving.repository import servable_versions
from tests.serving_fixtures import export_tiny_model, image_request, place_version, start_server, stub, xray_guard

SETS = {"kermany-test": "chest_xray/test", "external": "external", "rsna": "sites/rsna"}
ADULT_SETS = ("external", "rsna")


def films(shared: str, folder: str, seed: int = 0) -> List[Tuple[str, str]]:
    """(path, label) of every film of a set, shuffled: traffic mixes the classes."""
    found = [(path, label) for label in LABELS for path in sorted(glob.glob(f"{shared}/{folder}/{label}/*.jp*g"))]
    random.Random(seed).shuffle(found)
    return found


def tiny_model(work: str, shared: str) -> Tuple[str, str, str]:
    """(serving dir, model name, prepared data) of the tests' tiny model, with Kermany train films as reference."""
    serving_dir, data = os.path.join(work, "serving"), os.path.join(work, "data")
    os.makedirs(os.path.join(serving_dir, "pneumonia"))
    model = export_tiny_model(os.path.join(work, "model"), os.path.join(work, "w"), 7, lambda m: xray_guard(m, shared))
    place_version(os.path.join(serving_dir, "pneumonia"), 1, model)
    os.makedirs(os.path.join(data, "eval"))
    with tf.io.TFRecordWriter(os.path.join(data, "eval", "data-00000-of-00001.tfrecord.gz"), "GZIP") as writer:
        for path in sorted(glob.glob(f"{shared}/chest_xray/train/*/*.jpeg"))[3::20]:
            feature = {
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[open(path, "rb").read()])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int("/PNEUMONIA/" in path)])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return serving_dir, "pneumonia", data


def trained_model(root: str) -> Tuple[str, str, str]:
    run = RunConfig(root=root)
    base = os.path.join(run.serving_dir, run.model_name)
    if not servable_versions(base) or not tf.io.gfile.glob(os.path.join(run.data, "eval", "*.tfrecord.gz")):
        raise SystemExit(
            f"error: this needs a model trained by the pipeline: a pushed version under {base} and its prepared "
            f"validation split under {run.data}/eval (run `pneumonia run --root {root}` first), or pass --tiny to "
            "measure the machinery on an untrained model"
        )
    return run.serving_dir, run.model_name, run.data


def replay(serving_dir: str, model: str, shared: str, prefix: str, workers: int) -> Dict[str, int]:
    """Sends every set, one after the other, through a server that logs every request; label per request id."""
    text = (
        f'model_config_list {{ config {{ name: "{model}" base_path: "{os.path.join(serving_dir, model)}" '
        f'model_platform: "tensorflow" logging_config {{ log_collector_config {{ filename_prefix: "{prefix}" }} '
        "sampling_config { sampling_rate: 1.0 } } } }"
    )
    config_file = os.path.join(os.path.dirname(os.path.dirname(prefix)), "models.config")
    with open(config_file, "w") as f:
        f.write(text)
    server = start_server(config.read(config_file), rest_port=None)
    labels = {}

    def send(request_id: str, path: str) -> None:
        request = image_request([open(path, "rb").read()], model=model)
        stub(server).Predict(request, timeout=120, metadata=[("x-request-id", request_id)])

    try:
        with futures.ThreadPoolExecutor(workers) as pool:
            for name, folder in SETS.items():
                started, sent = time.monotonic(), films(shared, folder)
                ids = [f"{name}:{os.path.basename(path)}" for path, _ in sent]
                list(pool.map(send, ids, [path for path, _ in sent]))
                labels.update({i: LABELS[label] for i, (_, label) in zip(ids, sent)})
                print(f"sent {len(sent)} {name} films in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        server.stop(grace_seconds=5)
    return labels


def number(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def per_set_table(records, labels, ref, calibration, image_drift) -> List[str]:
    rows = [
        "| set | films | OOD share | drifted image statistics | score KS D | prevalence: EM [95%] / true | "
        "accuracy: est. / real | sensitivity: est. / real | specificity: est. / real |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SETS:
        group = records[records.request_id.str.startswith(name + ":")]
        w = windows.measure(name, group, ref, calibration, image_drift, labels)
        drifted = ", ".join(f.feature for f in w.features if f.drifted) or "none"
        truth = group.request_id.map(labels).mean()
        rows.append(
            f"| {name} | {w.images} | {w.ood_share:.2f} | {drifted} | {w.score.ks_statistic:.2f} | "
            f"{w.prevalence[0]:.2f} [{w.prevalence[1]:.2f}, {w.prevalence[2]:.2f}] / {truth:.2f} | "
            + " | ".join(
                f"{number(getattr(w.estimated, key))} / {number(getattr(w.realised, key))}"
                for key in ("accuracy", "sensitivity", "specificity")
            )
            + " |"
        )
    return rows


def alarm_latency(records, adult: str, ref, calibration, image_drift, limits, size: int, step: int) -> str:
    """Kermany test then `adult` as one stream: false alarms before, adult films sent at the first alarm."""
    stream = pd.concat([records[records.request_id.str.startswith(s + ":")] for s in ("kermany-test", adult)])
    stream = stream.reset_index(drop=True)
    kermany = int(stream.request_id.str.startswith("kermany-test:").sum())

    def alarmed(end: int) -> bool:
        window = windows.measure(str(end), stream.iloc[end - size : end], ref, calibration, image_drift, None, 0, False)
        return any(a["kind"] in ("image_drift", "score_drift") for a in windows.alerts(window, limits))

    kermany_windows = range(size, kermany + 1, size)
    false_alarms = sum(alarmed(end) for end in kermany_windows)
    first = next((end for end in range(kermany + step, len(stream) + 1, step) if alarmed(end)), None)
    caught = f"after {first - kermany} {adult} films" if first else f"not within {len(stream) - kermany} films"
    return f"| Kermany test, then {adult} | {caught} | {false_alarms} of {len(kermany_windows)} Kermany-only windows |"


def measure(args: argparse.Namespace, shared: str, work: str) -> List[str]:
    """Serves, replays and analyses; the Markdown lines of the result."""
    serving_dir, model, data = tiny_model(work, shared) if args.tiny else trained_model(args.root)
    version = servable_versions(os.path.join(serving_dir, model))[-1]
    prefix = os.path.join(work, "logs", "requests")
    labels = pd.Series(replay(serving_dir, model, shared, prefix, args.workers))
    records = read_logs(prefix, model)
    ref = reference.compute(serving_dir, model, version, data)
    calibration = reference.calibration(ref)
    image_drift = drift.ImageDrift(ref.statistics)
    limits = Limits()
    described = (
        "the tests' tiny untrained CNN" if args.tiny else f"{model} version {version} under {shown_path(args.root)}"
    )
    source = "every 20th Kermany train film" if args.tiny else f"the validation split of {shown_path(data)}"
    return [
        f"Model: {described}; reference: {ref.probability.size} images, {source}; {reference_note(calibration)}.",
        "",
        *per_set_table(records, labels, ref, calibration, image_drift),
        "",
        f"| stream ({args.window}-request windows every {args.step}) | drift alarm | false alarms |",
        "|---|---|---|",
        *(
            alarm_latency(records, adult, ref, calibration, image_drift, limits, args.window, args.step)
            for adult in ADULT_SETS
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", default=RunConfig().root, help="run root of `pneumonia run` (default ~/pneumonia-runs)"
    )
    parser.add_argument("--tiny", action="store_true", help="measure on the tests' tiny untrained CNN instead")
    parser.add_argument("--window", type=int, default=64, help="requests per window in the alarm scan (default 64)")
    parser.add_argument("--step", type=int, default=8, help="the scan's windows end every STEP requests (default 8)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent gRPC callers (default 4)")
    parser.add_argument("--into", help="write the tables into this Markdown file's generated section")
    parser.add_argument("--section", default="monitor", help="with --into: the section (default monitor)")
    args = parser.parse_args()
    shared = shared_data_dir()
    if shared is None:
        raise SystemExit("error: ../shared/data is missing beside the checkout (or set PNEUMONIA_SHARED_DATA)")
    with tempfile.TemporaryDirectory(prefix="monitor-bench-") as work:
        lines = measure(args, shared, work)
    text = "\n".join(lines)
    print(text)
    if args.into:
        replace_generated(args.into, text, args.section)
        print(f"updated {args.into}", file=sys.stderr)


def reference_note(calibration: reference.Calibration) -> str:
    if calibration.ece is None:
        return "validation has no labels"
    if calibration.platt is None:
        return f"validation ECE {calibration.ece:.3f}, probabilities used as served"
    return (
        f"validation ECE {calibration.ece:.3f}, Platt-scaled in the monitor (cross-fitted ECE "
        f"{calibration.ece_after:.3f})"
    )


if __name__ == "__main__":
    main()
