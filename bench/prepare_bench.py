"""Prepare throughput: the Beam job vs the floor (one plain process doing the same work, no Beam).

The floor reads, hashes, fully decodes, serializes and gzip-writes every listed image in one loop.
Both run in this process, one after the other, on the same files; the ratio is what matters on a noisy
machine. Usage: .venv/bin/python bench/prepare_bench.py [DATA_DIR] (default ../shared/data).
"""

import hashlib
import os
import sys
import tempfile
import time

import tensorflow as tf

from pneumonia.data import prepare
from pneumonia.data import records as data_records
from pneumonia.data import sources as data_sources
from pneumonia.data.images import inspect_image, parse_patient_and_pathogen


def floor(sources, out_dir):
    """The same per-file work as prepare, in one process: returns images written."""
    written = 0
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    with tf.io.TFRecordWriter(os.path.join(out_dir, "floor.tfrecord.gz"), options) as writer:
        for source in sources:
            for relpath in data_sources.walk(source.path):
                candidate, _ = data_sources.classify(source, relpath)
                if candidate is None:
                    continue
                with open(os.path.join(source.path, relpath), "rb") as f:
                    data = f.read()
                height, width, channels = inspect_image(data)
                patient, pathogen = parse_patient_and_pathogen(os.path.basename(relpath), candidate.label)
                record = data_records.Record(
                    candidate,
                    candidate.split,
                    patient or relpath,
                    pathogen,
                    height,
                    width,
                    channels,
                    hashlib.sha256(data).hexdigest(),
                )
                writer.write(data_records.to_example(record, data).SerializeToString(deterministic=True))
                written += 1
    return written


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main():
    data = sys.argv[1] if len(sys.argv) > 1 else data_sources.shared_data_dir()
    sources = [data_sources.Source.parse(s) for s in data_sources.sources_for(data)]
    with tempfile.TemporaryDirectory() as tmp:
        images, floor_s = timed(floor, sources, tmp)
        rows = [("floor: one process, no Beam", images, floor_s)]
        for label, args in [("Beam DirectRunner (default)", None)]:
            report, seconds = timed(
                prepare.prepare, sources, os.path.join(tmp, label[:4] + str(len(rows))), beam_args=args
            )
            rows.append((label, report["written"] + len(report["duplicates"]), seconds))
    floor_rate = rows[0][1] / rows[0][2]
    print(f"{'run':<32}{'images':>8}{'seconds':>10}{'images/s':>10}{'vs floor':>10}")
    for label, count, seconds in rows:
        print(f"{label:<32}{count:>8}{seconds:>10.1f}{count / seconds:>10.0f}{count / seconds / floor_rate:>10.2f}")


if __name__ == "__main__":
    main()
