"""What the 95% intervals cost the Evaluator: the pipeline's eval config without intervals, with the analytic
intervals (the default: DeLong, Wilson, the Brier score's normal interval), with TFMA's jackknife (20 buckets)
and with its Poisson bootstrap (20 replicates), on the same real images and model. Target: analytic at most
1.5x the CPU time of none.

The model is a tiny CNN exported through trainer/signatures.py (its weights do not matter for the cost);
the examples are real test X-rays written as the pipeline's tf.Examples, each slice crossed as in the
pipeline. The runs happen in this process (Beam's in-process runner), one after the other; CPU seconds
and their ratio are what matter on a shared machine, where wall time depends on the neighbours.
Usage: .venv/bin/python bench/evaluator_intervals_bench.py [IMAGES] (default 400).
"""

import glob
import os
import sys
import tempfile
import time

import tensorflow as tf
import tensorflow_model_analysis as tfma

from pipeline import evaluation
from pneumonia.data import sources as data_sources
from trainer import models, ood, signatures
from trainer.threshold import Threshold


def write_examples(files, path):
    with tf.io.TFRecordWriter(path) as writer:
        for index, name in enumerate(files):
            label = int("PNEUMONIA" in name)
            split = ("eval", "test")[index % 2]
            text = {"split": split, "dataset": "kermany", "source": "kermany", "pathogen": "none"}
            feature = {
                key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
                for key, value in text.items()
            }
            with open(name, "rb") as f:
                feature["image"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[f.read()]))
            feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def evaluate(model_dir, data, output, intervals: str):
    """(wall seconds, CPU seconds of this process) of one TFMA run."""
    config = evaluation.create_eval_config(0.5, 0.01, "eval", confidence_intervals=intervals)
    config = tfma.utils.update_eval_config_with_defaults(config, has_baseline=False, rubber_stamp=True)
    for spec in config.metrics_specs:  # no baseline here
        for metric in spec.metrics:
            for threshold in metric.per_slice_thresholds:
                threshold.threshold.ClearField("change_threshold")
    model = tfma.default_eval_shared_model(model_dir, eval_config=config)
    start, cpu = time.perf_counter(), time.process_time()
    tfma.run_model_analysis(eval_shared_model=model, eval_config=config, data_location=data, output_path=output)
    return time.perf_counter() - start, time.process_time() - cpu


def main():
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    data_dir = data_sources.shared_data_dir()
    files = sorted(glob.glob(os.path.join(data_dir, "chest_xray", "test", "*", "*.jpeg")))
    files = (files[:: max(1, len(files) // count)])[:count]
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "examples.tfrecord")
        write_examples(files, data)
        settings = dict(models.REGISTRY["cnn"].tiny)
        model_dir = os.path.join(tmp, "model")
        model = models.build("cnn", 64, **settings)
        signatures.export(
            model,
            model_dir,
            64,
            Threshold(0.5, "youden", 1, 1, 1),
            os.path.join(tmp, "work"),
            "cnn",
            settings,
            guard=ood.noise_guard(model, 64),
        )
        evaluate(model_dir, data, os.path.join(tmp, "warm-up"), "none")  # Beam and TF start-up, not counted
        seconds = {
            method: evaluate(model_dir, data, os.path.join(tmp, method), method)
            for method in ("none", "analytic", "jackknife", "bootstrap")
        }
    print(f"{'Evaluator run (confidence intervals)':<40}{'images':>8}{'wall s':>9}{'CPU s':>9}{'CPU vs none':>12}")
    for method, (wall, cpu) in seconds.items():
        print(f"{method:<40}{len(files):>8}{wall:>9.1f}{cpu:>9.1f}{cpu / seconds['none'][1]:>12.2f}")


if __name__ == "__main__":
    main()
