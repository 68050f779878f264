"""How the pipeline scales: per-stage throughput measured here, projected to 100k and 400k films.

Measured on this machine, each in one run:
- prepare (the Beam job of pneumonia/data/prepare.py, DirectRunner) films/s on the 224-px films and on the
  full-size originals, at 1 and 2 Beam workers (`--direct_num_workers`, multi_processing): the ratio is the
  parallel efficiency of adding a worker. Each rate is the slope between a run on a tenth of the films and
  one on all of them, so Beam's fixed start-up cancels out.
- training films/s per replica: the default cnn at --image-size, model.fit on real decoded films, timed
  between the ends of the first and the last batch (tracing left out).
- serving films/s per replica: the exported `predict_images` signature called in process on a batch of 32
  encoded films (decoding included).
The projection (written with --write) divides the films by the measured rates, assumes the parallel
efficiency measured for prepare holds for every added core, and machines of --cores-per-machine cores; each
assumption is stated in the output. Not measured here: statistics (TFDV) and the Evaluator (TFMA); the
projection leaves them out and says so.

Usage: .venv/bin/python bench/scaling_bench.py [--data DIR] [--films 1500] [--write docs/scaling.md]
"""

import argparse
import glob
import os
import shutil
import tempfile
import time
from typing import Optional

import keras
import tensorflow as tf

from pneumonia.data import prepare
from pneumonia.data.sources import Source, shared_data_dir
from trainer import models, objective, ood, signatures
from trainer.preprocessing import decode_batch
from trainer.threshold import Threshold

TARGETS = (100_000, 400_000)
EPOCHS = 5  # TrainerConfig's default
ASSUMED_EFFICIENCY = 0.8  # per added core, when the two-worker run here is lost in the noise (stated as assumed)


def class_folder_copy(files, dest: str) -> Source:
    """`files` copied into NORMAL/ and PNEUMONIA/ under `dest`: a source prepare reads as one site."""
    for path in files:
        label = os.path.basename(os.path.dirname(path))
        os.makedirs(os.path.join(dest, label), exist_ok=True)
        shutil.copyfile(path, os.path.join(dest, label, os.path.basename(path)))
    return Source.parse(f"bench={dest}")


def prepare_seconds(source: Source, out: str, workers: int) -> float:
    """Seconds of prepare's whole Beam job with `workers` DirectRunner workers."""
    mode = "in_memory" if workers == 1 else "multi_processing"
    started = time.perf_counter()
    prepare.prepare([source], out, beam_args=[f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"])
    return time.perf_counter() - started


def prepare_rate(files, work: str, workers: int) -> Optional[float]:
    """Films per second of prepare at steady state: the slope between a tenth of `files` and all of them, so
    that Beam's fixed start-up (worker processes, TensorFlow imports) cancels out."""
    few, many = files[: len(files) // 10], files
    seconds = [
        prepare_seconds(
            class_folder_copy(subset, os.path.join(work, f"in-{size}")), os.path.join(work, f"out-{size}"), workers
        )
        for size, subset in (("few", few), ("many", many))
    ]
    extra = seconds[1] - seconds[0]
    return (len(many) - len(few)) / extra if extra > 0.1 * seconds[0] else None  # None: lost in the noise


class BatchClock(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batch_ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.batch_ends.append(time.perf_counter())


def training_rate(images, labels, image_size: int, batch_size: int, batches: int):
    """(films per second of one replica training the default cnn, tracing left out; the trained model)."""
    keras.utils.set_random_seed(0)
    model = models.build("cnn", image_size)
    pixels = decode_batch(tf.constant(images[:batch_size]), image_size)
    dataset = tf.data.Dataset.from_tensors((pixels, tf.constant(labels[:batch_size]))).repeat(batches)
    loss, _ = objective.loss_and_class_weights("bce", 1, 1)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss)
    clock = BatchClock()
    model.fit(dataset, epochs=1, callbacks=[clock], verbose=0)
    return (len(clock.batch_ends) - 1) * batch_size / (clock.batch_ends[-1] - clock.batch_ends[0]), model


def serving_rate(model, images, image_size: int, work_dir: str, repeats: int = 3) -> float:
    """Films per second of the exported `predict_images` signature on a batch, after one warm-up call."""
    export_dir = os.path.join(work_dir, "export")
    signatures.export(
        model,
        export_dir,
        image_size,
        Threshold(0.5, "bench", 0.0, 0.0, 0),
        os.path.join(work_dir, "assets"),
        "cnn",
        {},
        guard=ood.noise_guard(model, image_size),
    )
    predict = tf.saved_model.load(export_dir).signatures["predict_images"]
    batch = tf.constant(images)
    predict(images=batch)
    started = time.perf_counter()
    for _ in range(repeats):
        predict(images=batch)
    return repeats * len(images) / (time.perf_counter() - started)


def hours(films: int, rate_per_core: float, cores: int, efficiency: float) -> float:
    """Wall-clock hours for `films` at `rate_per_core` on `cores`, each core beyond the first adding
    `efficiency` of one."""
    return films / (rate_per_core * (1 + (cores - 1) * efficiency)) / 3600


def report(figures: dict, args) -> str:
    """docs/scaling.md: the measured figures, the assumptions, and the projection."""
    one, two = figures["prepare 224 px, 1 worker"], figures["prepare 224 px, 2 workers"]
    measured = one is not None and two is not None
    efficiency = min(max(two / (2 * one), 0.1), 1.0) if measured else ASSUMED_EFFICIENCY
    cores, here = args.cores_per_machine, os.cpu_count()
    per_film = {
        "prepare (224-px films)": (figures["prepare 224 px, 1 worker"], 1),
        "prepare (full-size films)": (figures["prepare originals, 1 worker"], 1),
        f"training ({EPOCHS} epochs, cnn at {args.image_size} px)": (figures["training, 1 replica"] / here, EPOCHS),
        "serving (one pass over every film)": (figures["serving, 1 replica"] / here, 1),
    }
    lines = [
        "# Scaling: measured here, projected to 100k and 400k films",
        "",
        "Generated by `bench/scaling_bench.py --write docs/scaling.md`; do not edit by hand. Every figure is "
        "marked **measured** (this machine, one run) or **projected** (arithmetic on the measured ones).",
        "",
        f"## Measured ({os.cpu_count()} CPU cores shared with other jobs; prepare on up to {args.films} 224-px films)",
        "",
        "| stage | films/s | |",
        "|---|---:|---|",
        *(
            f"| {name} | {rate:.1f} | measured |" if rate else f"| {name} | - | lost in the start-up's noise |"
            for name, rate in figures.items()
        ),
        "",
        f"Parallel efficiency of a second Beam worker: {efficiency:.2f} "
        + (
            "(measured, prepare on 224-px films; clipped to [0.1, 1])."
            if measured
            else "(**assumed**: the two-worker run here was lost in the noise of shared cores)."
        ),
        "",
        "## Assumptions",
        "",
        f"- A machine has {cores} cores. Prepare's rate per core is its one-worker rate above (one process); "
        f"training and serving used all {here} cores here (TensorFlow's threads), so theirs is the rate above "
        f"divided by {here}. Every core beyond the first adds {efficiency:.2f} of one "
        + ("(the measured two-worker efficiency, " if measured else "(assumed, ")
        + "held constant: optimistic for many workers, whose shuffles and stragglers cost more).",
        "- CPU only: a GPU replica trains and serves the cnn many times faster; this projection does not price GPUs.",
        "- Prepare's rates are slopes: the films between a run on a tenth of the set and a run on all of it, "
        "divided by the extra seconds, so Beam's fixed start-up cancels out.",
        "- Training scales with replicas at the same efficiency (all-reduce of the cnn's weights is small); "
        "with auto-shard DATA every worker also decodes every film, which this projection does not charge.",
        "- Statistics (TFDV) and the Evaluator (TFMA) were not measured by this script: they are left out, and "
        "the Evaluator's analytic intervals cost 1.14x the Evaluator without them (docs/benchmarks.md).",
        "",
        "## Projected wall-clock hours",
        "",
        "| stage | " + " | ".join(f"{films:,} films, 1 machine | machines for 1 hour" for films in TARGETS) + " |",
        "|---|" + "---:|---:|" * len(TARGETS),
    ]
    slowest = {}
    for stage, (rate, passes) in per_film.items():
        if rate is None:
            lines.append(f"| {stage} | " + " | ".join(["not projected: not measured here"] * 2 * len(TARGETS)) + " |")
            continue
        cells = []
        for films in TARGETS:
            one = hours(films * passes, rate, cores, efficiency)
            cells.append(f"{one:.2f} (projected) | {max(1, -(-one // 1)):.0f} (projected)")
            slowest.setdefault(films, []).append((one, stage))
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    first = max(slowest[TARGETS[-1]])[1]
    lines += [
        "",
        f"**First stage to saturate** (the longest on one machine at {TARGETS[-1]:,} films, projected): {first}.",
        "",
        "## The knobs that move each stage",
        "",
        "- prepare, statistics, the Evaluator: Beam workers (`--beam-arg=--direct_num_workers=N` on one "
        "machine; `--beam-arg=--runner=DataflowRunner ...`, FlinkRunner or SparkRunner across machines, "
        'kubeflow/README.md "Scale-out"); full-size films cost more per film than 224-px ones (above).',
        "- training: replicas (`--distribution mirrored` on a multi-GPU node, `multi_worker` as a TFJob, "
        "kubeflow/tfjob-trainer.yaml), image size (`--image-size`: pixels grow with its square), epochs.",
        "- the Evaluator: its intervals (analytic by default; the bootstrap costs far more).",
        "- serving: replicas behind the load balancer; batching (serving/README.md).",
        "",
        "## Beam runners beyond one machine",
        "",
        "The same `prepare` command runs on another runner through `--beam-arg`: "
        "`--beam-arg=--runner=DataflowRunner --beam-arg=--project=P --beam-arg=--region=R "
        "--beam-arg=--temp_location=gs://B/tmp`, `--beam-arg=--runner=FlinkRunner "
        "--beam-arg=--flink_master=HOST:8081`, `--beam-arg=--runner=SparkRunner "
        "--beam-arg=--spark_master_url=spark://HOST:7077`; a runner whose packages are missing fails in one "
        "line before the job starts (pneumonia/data/runners.py). Not run here: Dataflow (needs a project), "
        "Flink and Spark (their job servers need a JVM), PrismRunner (Beam downloads its Go binary from GitHub "
        "at run time). Tried here: Beam 2.74's DaskRunner "
        "(`--beam-arg=--runner=apache_beam.runners.dask.dask_runner.DaskRunner "
        "--beam-arg=--dask_client_address=tcp://HOST:8786`) on a dask.distributed LocalCluster of two worker "
        "processes: it starts, then hands one of prepare's steps a dict where a record belongs, so prepare "
        "fails on it (tests/prepare_dask_test.py keeps that as a strict expected failure).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=shared_data_dir(), help="the shared image folder")
    parser.add_argument("--films", type=int, default=1500, help="224-px films in the larger prepare run")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-batches", type=int, default=4, help="timed batches + 1 (the first traces)")
    parser.add_argument("--cores-per-machine", type=int, default=16)
    parser.add_argument("--write", help="write the projection to this file (docs/scaling.md)")
    args = parser.parse_args()
    if not args.data:
        parser.error("real images not found: pass --data DIR")

    train = sorted(glob.glob(os.path.join(args.data, "chest_xray/train/*/*.jpeg")))
    small = train[:: max(1, len(train) // args.films)][: args.films]  # spread over patients and both classes
    originals = sorted(glob.glob(os.path.join(args.data, "originals/*/*.jpeg")))
    figures = {}
    with tempfile.TemporaryDirectory() as work:
        for workers in (1, 2):
            label = "1 worker" if workers == 1 else f"{workers} workers"
            for name, files in (("224 px", small), ("originals", originals)):
                figures[f"prepare {name}, {label}"] = prepare_rate(
                    files, os.path.join(work, f"{name}{workers}"), workers
                )
            print(f"measured prepare, {label}", flush=True)
        images = [open(path, "rb").read() for path in small]
        labels = [float("/PNEUMONIA/" in path) for path in small]
        rate, model = training_rate(images, labels, args.image_size, args.batch_size, args.train_batches)
        figures["training, 1 replica"] = rate
        figures["serving, 1 replica"] = serving_rate(model, images[:32], args.image_size, work)
    for name, value in figures.items():
        print(f"{name:>32}: " + (f"{value:8.1f} films/s" if value else "lost in the noise"))
    if args.write:
        with open(args.write, "w") as f:
            f.write(report(figures, args))
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
