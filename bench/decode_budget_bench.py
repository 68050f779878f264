"""Memory under decompression bombs: `pneumonia serve`'s peak RSS with and without its decoded-pixel budget.

Exports a 128 px CNN, starts `pneumonia serve` once per budget, sends CONCURRENCY images at once that
each declare (and hold) exactly the model's pixel budget (a 10,000 x 10,000 black PNG of about 100 KB,
the largest a model accepts and decodes), and prints the server's peak RSS over its RSS before them,
per budget pixel, and how long the last answer took. TensorFlow runs at most as many ops at once as
it has inter-op threads (one per core), so a 2-core machine would hide the problem: the server gets
--inter-op-threads (default 16, a 16-core node) through TF_NUM_INTEROP_THREADS.
Usage: .venv/bin/python bench/decode_budget_bench.py [--concurrency 6] [--budgets 0 250000000 400000000]
       [--inter-op-threads 16]    (budget 0: none, i.e. larger than all the images together)
"""

import argparse
import os
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf
from serving_bench import export, start_server  # this folder's: run as a script

from serving.client import PredictionClient
from trainer.pixel_budget import MAX_PIXELS


def memory_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


def peak_under_bombs(serving_dir: str, budget: int, bomb: bytes, concurrency: int, inter_op_threads: int) -> dict:
    log_path = os.path.join(serving_dir, f"budget-{budget}.log")
    process, server = start_server(
        serving_dir,
        "cnn",
        log_path,
        "--max-decoded-pixels",
        str(budget),
        "--max-decode-wait-seconds",
        "600",
        env={**os.environ, "TF_NUM_INTEROP_THREADS": str(inter_op_threads)},
    )
    try:
        with PredictionClient(server, "cnn", retries=8, timeout_seconds=600) as client:
            client.model_status()  # the server is up and warmed up
            before = memory_kib(process.pid, "VmRSS")
            started = time.monotonic()
            threads = [threading.Thread(target=client.predict, args=([bomb],)) for _ in range(concurrency)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            seconds = time.monotonic() - started
            peak = memory_kib(process.pid, "VmHWM")
    finally:
        process.terminate()
        process.wait(timeout=60)
    grown = (peak - before) * 1024
    return {"grown_gib": grown / 2**30, "bytes_per_budget_pixel": grown / budget, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=6)
    parser.add_argument("--budgets", type=int, nargs="+", default=[0, 250_000_000, 400_000_000])
    parser.add_argument("--inter-op-threads", type=int, default=16)
    args = parser.parse_args()
    side = int(MAX_PIXELS**0.5)
    bomb = tf.io.encode_png(np.zeros((side, side, 1), np.uint8)).numpy()
    print(
        f"{args.concurrency} concurrent {side}x{side} PNGs of {len(bomb) // 1024} KB each (the model's budget), "
        f"{args.inter_op_threads} inter-op threads in the server"
    )
    print(f"{'budget MP':>10}{'peak RSS growth GiB':>21}{'bytes/budget pixel':>20}{'all answered s':>16}")
    with tempfile.TemporaryDirectory() as serving_dir:
        export("cnn", 128, serving_dir)
        for budget in args.budgets:
            effective = budget or MAX_PIXELS * args.concurrency
            r = peak_under_bombs(serving_dir, effective, bomb, args.concurrency, args.inter_op_threads)
            print(
                f"{'none' if not budget else budget // 1_000_000:>10}{r['grown_gib']:>21.2f}"
                f"{r['bytes_per_budget_pixel'] if budget else float('nan'):>20.1f}{r['seconds']:>16.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
