"""Trainer model zoo on this machine: size, training throughput and serving latency per architecture.

For each architecture at its default configuration (not the tiny test one): parameter count, SavedModel
size, training images/s (model.fit on one batch of decoded real images, repeated: the input pipeline is
the same for every architecture; timed between the ends of the first and the last batch, so tracing is left
out; DenseNet121 from scratch, i.e. its whole backbone training), and the median latency of the exported
`predict_images` signature (decoding included) for one image and for a batch of 32. Few batches are
measured: the figures are rough, and their ratios between architectures measured in one run are what
matter on a shared machine.

Usage: .venv/bin/python bench/trainer_bench.py [--data DIR] [--image-size 224] [--batch-size 16]
       [--train-batches 4] [--architectures cnn,densenet121,cnn_transformer,swin]
"""

import argparse
import glob
import os
import statistics
import tempfile
import time

import keras
import tensorflow as tf

from pneumonia.data.sources import shared_data_dir
from trainer import models, objective, ood, signatures
from trainer.preprocessing import decode_batch
from trainer.threshold import Threshold

LATENCY_REPEATS = {1: 10, 32: 3}  # batch size -> timed calls


class BatchClock(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.batch_ends = []

    def on_train_batch_end(self, batch, logs=None):
        self.batch_ends.append(time.perf_counter())


def training_throughput(model: keras.Model, pixels: tf.Tensor, labels: tf.Tensor, batches: int) -> float:
    """Images per second over `batches - 1` training steps, after the first (which traces)."""
    dataset = tf.data.Dataset.from_tensors((pixels, labels)).repeat(batches)
    loss, class_weights = objective.loss_and_class_weights("bce", 1, 1)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=loss)
    clock = BatchClock()
    model.fit(dataset, epochs=1, class_weight=class_weights, callbacks=[clock], verbose=0)
    return (len(clock.batch_ends) - 1) * len(labels) / (clock.batch_ends[-1] - clock.batch_ends[0])


def median_latency_ms(predict, images) -> float:
    predict(images=tf.constant(images))  # warm-up
    times = []
    for _ in range(LATENCY_REPEATS[len(images)]):
        start = time.perf_counter()
        predict(images=tf.constant(images))
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def folder_megabytes(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder) for name in names) / 1e6


def measure(name: str, images, labels, work_dir: str, args) -> dict:
    keras.utils.set_random_seed(0)
    model = models.build(name, args.image_size)
    pixels = decode_batch(tf.constant(images[: args.batch_size]), args.image_size)
    row = {
        "architecture": name,
        "parameters": model.count_params(),
        "train img/s": training_throughput(model, pixels, tf.constant(labels[: args.batch_size]), args.train_batches),
    }
    export_dir = os.path.join(work_dir, name)
    signatures.export(
        model,
        export_dir,
        args.image_size,
        Threshold(0.5, "bench", 0.0, 0.0, 0),
        os.path.join(work_dir, f"{name}-assets"),
        name,
        {},
        guard=ood.noise_guard(model, args.image_size),
    )
    row["SavedModel MB"] = folder_megabytes(export_dir)
    predict = tf.saved_model.load(export_dir).signatures["predict_images"]
    row["1 image ms"] = median_latency_ms(predict, images[:1])
    row["32 images ms"] = median_latency_ms(predict, images[:32])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=shared_data_dir(), help="the shared image folder (chest_xray/train/...)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-batches", type=int, default=4, help="timed batches + 1 (the first traces)")
    parser.add_argument("--architectures", default=",".join(models.REGISTRY))
    args = parser.parse_args()
    if not args.data:
        parser.error("real images not found: pass --data DIR")
    if args.train_batches < 2:
        parser.error("--train-batches must be at least 2: the first batch traces and is not timed")

    count = max(args.batch_size, 32)
    files = sorted(glob.glob(os.path.join(args.data, "chest_xray/train/*/*.jpeg")))[::50][:count]
    images = [open(path, "rb").read() for path in files]
    labels = [float("/PNEUMONIA/" in path) for path in files]
    rows = []
    with tempfile.TemporaryDirectory() as work_dir:
        for name in args.architectures.split(","):
            rows.append(measure(name, images, labels, work_dir, args))
            print(f"measured {name}", flush=True)

    print(
        f"\n{args.image_size} px, {os.cpu_count()} CPU cores, training batch {args.batch_size}, "
        f"{args.train_batches - 1} timed batches"
    )
    columns = list(rows[0])
    print("".join(f"{column:>16}" for column in columns))
    for row in rows:
        print(
            f"{row['architecture']:>16}{row['parameters']:>16,}"
            + "".join(f"{row[column]:>16.1f}" for column in columns[2:])
        )


if __name__ == "__main__":
    main()
