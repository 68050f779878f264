"""Serving overhead: gRPC `Predict` through `pneumonia serve` vs calling the SavedModel in-process (the floor),
what an explanation costs, what server-side batching gains, and what a grpc.aio front would change.

Per architecture (untrained weights; speed does not depend on them) it exports a SavedModel, starts
`pneumonia serve` on it in a child process, and measures, on the same encoded X-ray:
  - in-process `predict_images` latency with batch 1 (the floor) and throughput with batch 1 and 32;
  - gRPC p50/p99 latency at concurrency 1, batch 1, as a ratio to the in-process p50, and where the
    difference goes: the server's own time per request (from its JSON request log: conversions,
    checks, the model call, logging) and the round trip of an RPC that runs no model (GetModelStatus);
  - the same p50 through the same server code behind a grpc.aio front (an event-loop server, kept here in
    the bench only: `serving_bench.py serve`), its calls taking turns with those of `pneumonia serve`, as a
    ratio to the floor: whether leaving grpcio's synchronous server removes the overhead;
  - gRPC p50/p99 latency of `explain_images` at concurrency 1, batch 1, and its p50 as a ratio to that of
    `predict_images` measured the same way (raw stub) right after;
  - gRPC throughput (images/s) at concurrency 8 with batch 1 and batch 32, as a ratio to in-process
    throughput at the same batch size (one caller).
Measurements run one after the other, so the servers and the floor never compete for the cores; each
ratio pairs measurements taken back to back, and the medians over rounds are printed.
Then batching: two servers with the same `--workers` (32 by default), one with `--enable-batching
--batching-parameters-file` (by default the ConfigMap's batching.config in serving/k8s/), one without;
throughput and p50/p99 latency of single-image Predict requests at concurrency 1, 8 and 32, each concurrency
measured on both servers back to back, and the ratios batching / no batching.
Then the hot swap: new versions pushed while the server runs, alternately with the Pusher's warm-up
requests (assets.extra/tf_serving_warmup_requests, replayed on load) and without; the latency of the
first request answered by each new version, and its ratio without/with warm-up.
Usage: .venv/bin/python bench/serving_bench.py [--architectures cnn densenet121] [--image-size 128]
       [--seconds 3] [--rounds 3] [--swaps 3] [--parts overhead batching swaps]
       [--batching-parameters-file FILE] [--workers 32]
"""

import argparse
import asyncio
import glob
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import portpicker
import tensorflow as tf
import yaml
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2, prediction_service_pb2_grpc

from components.pusher.warmup import write_warmup_requests
from pneumonia.data.sources import shared_data_dir
from serving import config
from serving.client import PredictionClient
from serving.models import ModelManager, ServingError, log_request
from serving.repository import model_fingerprint, push_atomically
from serving.server import model_spec_target, predict, replay_warmup
from trainer import models, ood, signatures
from trainer.threshold import Threshold

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S_BATCHING = os.path.join(REPO, "serving", "k8s", "configmap.yaml")  # its batching.config is the default
CONCURRENCIES = (1, 8, 32)


def sample_image() -> bytes:
    """A real chest X-ray when ../shared/data is there (decode cost matters), else a synthetic one."""
    data = shared_data_dir()
    if data:
        return open(sorted(glob.glob(f"{data}/chest_xray/test/PNEUMONIA/*.jpeg"))[0], "rb").read()
    pixels = np.random.default_rng(0).integers(0, 256, size=(1200, 1500, 1), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels).numpy()


def export(architecture: str, image_size: int, serving_dir: str) -> str:
    model = models.build(architecture, image_size)
    version_dir = os.path.join(serving_dir, architecture, "1")
    signatures.export(
        model,
        version_dir,
        image_size,
        Threshold(0.5, "youden", 1.0, 1.0, 0),
        os.path.join(serving_dir, f".work-{architecture}"),
        architecture,
        {},
        guard=ood.noise_guard(model, image_size),
    )
    return version_dir


def timed_calls(call, seconds: float, minimum: int = 5) -> np.ndarray:
    """Latencies (s) of repeated calls for about `seconds`, at least `minimum` calls."""
    latencies, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline or len(latencies) < minimum:
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return np.array(latencies)


def alternating(calls, seconds: float, minimum: int = 5):
    """Latencies (s) of each call, the calls taking turns for about `seconds`: both sides of a comparison
    see the same load from the rest of the machine."""
    latencies, deadline = [[] for _ in calls], time.monotonic() + seconds
    while time.monotonic() < deadline or len(latencies[0]) < minimum:
        for call, measured in zip(calls, latencies):
            started = time.perf_counter()
            call()
            measured.append(time.perf_counter() - started)
    return [np.array(measured) for measured in latencies]


def throughput(call, batch: int, seconds: float) -> float:
    """Images/s of one caller repeating a batch call."""
    return batch / np.median(timed_calls(call, seconds, minimum=3))


def grpc_load(server: str, model_name: str, image: bytes, batch: int, concurrency: int, seconds: float):
    """(images/s, latencies in s) with `concurrency` clients each sending `batch` images per request, one
    request after the other, for about `seconds`."""
    latencies = [[] for _ in range(concurrency)]
    stop = threading.Event()

    def client(index: int):
        with PredictionClient(server, model_name) as connection:
            images = [image] * batch
            connection.predict(images)  # connect and warm up outside the timed window
            barrier.wait()
            while not stop.is_set():
                started = time.perf_counter()
                connection.predict(images)
                latencies[index].append(time.perf_counter() - started)

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.monotonic()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    answered = np.concatenate([np.array(each) for each in latencies])
    return len(answered) * batch / (time.monotonic() - started), answered


def signature_call(server: str, model_name: str, image: bytes, signature: str):
    """One raw gRPC Predict on `signature` for one image, as a callable: both signatures measured alike."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model_name, signature
    request.inputs["images"].CopyFrom(tf.make_tensor_proto([image], dtype=tf.string))
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server))
    return lambda: stub.Predict(request, timeout=60)


def start_server(
    serving_dir: str, model_name: str, log_path: str, *flags: str, env=None, front=("-m", "pneumonia.cli")
):
    """`pneumonia serve` (or another `front` taking its flags) in a child process; (process, gRPC address)."""
    port = portpicker.pick_unused_port()
    env = dict(env or os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))  # this checkout's code
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                *front,
                "serve",
                "--serving-dir",
                serving_dir,
                "--model-name",
                model_name,
                "--grpc-port",
                str(port),
                "--rest-port",
                "0",
                *flags,
            ],
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return process, f"127.0.0.1:{port}"


def serve_aio(serving_dir: str, model_name: str, grpc_port: int, workers: int = 8) -> None:
    """The candidate front: the server's own Predict code (resolution, checks, budget, model call, log line)
    behind grpc.aio, an event-loop server, with the model call on `workers` threads as `pneumonia serve`
    runs it. It lives here only: measured no faster than grpcio's synchronous server (docs/benchmarks.md)."""
    manager = ModelManager(
        config.model_config(model_name, os.path.join(serving_dir, model_name)), warm_up=replay_warmup
    ).start()
    pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc")

    class Service(prediction_service_pb2_grpc.PredictionServiceServicer):
        async def Predict(self, request, context):
            started, code, loaded = time.monotonic(), grpc.StatusCode.OK, None
            try:
                loaded = manager.resolve(*model_spec_target(request.model_spec))
                return await asyncio.get_running_loop().run_in_executor(
                    pool, predict, loaded, request, context.time_remaining()
                )
            except ServingError as error:
                code = error.code
                await context.abort(error.code, error.message)
            finally:
                log_request("grpc", "Predict", model_name, loaded and loaded.version, started, code)

    async def serve() -> None:
        server = grpc.aio.server(maximum_concurrent_rpcs=workers + 64)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Service(), server)
        server.add_insecure_port(f"127.0.0.1:{grpc_port}")
        await server.start()
        print("serving gRPC (aio front)", flush=True)
        await server.wait_for_termination()

    asyncio.run(serve())


def server_latency_ms(log_path: str, offset: int) -> float:
    """Median of the server's own `latency_ms` for Predict requests logged after byte `offset`."""
    with open(log_path) as f:
        f.seek(offset)
        lines = [line.split("serving.requests ", 1)[1] for line in f if "serving.requests " in line]
    return float(np.median([json.loads(line)["latency_ms"] for line in lines if '"Predict"' in line]))


def wait_ready(server: str, architecture: str, image: bytes) -> None:
    """Waits for a started server (retrying UNAVAILABLE for about 3 minutes: several may be loading models on
    a busy machine) and warms its channel and model up."""
    with PredictionClient(server, architecture, retries=10) as client:
        client.predict([image])


def stop(*processes) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=60)


def bench(architecture: str, image: bytes, seconds: float, rounds: int, serving_dir: str) -> dict:
    """Medians over `rounds` of (floor, gRPC) pairs measured back to back, so load from other processes
    on the machine hits both sides of each ratio alike."""
    version_dir = os.path.join(serving_dir, architecture, "1")
    in_process = tf.saved_model.load(version_dir).signatures["predict_images"]
    batches = {size: tf.constant([image] * size) for size in (1, 32)}
    for batch in batches.values():
        in_process(images=batch)  # warm up
    log_path = os.path.join(serving_dir, f"{architecture}.log")
    process, server = start_server(serving_dir, architecture, log_path)
    aio_process, aio_server = start_server(
        serving_dir, architecture, os.path.join(serving_dir, f"{architecture}-aio.log"), front=(__file__,)
    )
    figures = []
    try:
        wait_ready(aio_server, architecture, image)
        with (
            PredictionClient(server, architecture, retries=8) as client,
            PredictionClient(aio_server, architecture) as aio,
        ):
            client.predict([image])  # waits for the server (retries UNAVAILABLE), warms the channel
            explain, plain = (
                signature_call(server, architecture, image, name) for name in ("explain_images", "predict_images")
            )
            explain()
            for _ in range(rounds):
                floor = np.median(timed_calls(lambda: in_process(images=batches[1]), seconds))
                logged = os.path.getsize(log_path)
                latency, aio_latency = alternating(
                    [lambda: client.predict([image]), lambda: aio.predict([image])], seconds
                )
                handler_ms = server_latency_ms(log_path, logged)
                empty_rpc = np.median(timed_calls(client.model_status, seconds / 3))
                explained, predicted = timed_calls(explain, seconds), timed_calls(plain, seconds)
                round_figures = {
                    "floor_ms": floor * 1000,
                    "p50_ms": np.median(latency) * 1000,
                    "p99_ms": np.percentile(latency, 99) * 1000,
                    "p50_ratio": np.median(latency) / floor,
                    "aio_p50_ms": np.median(aio_latency) * 1000,
                    "aio_ratio": np.median(aio_latency) / floor,
                    "handler_ms": handler_ms,
                    "empty_rpc_ms": empty_rpc * 1000,
                    "explain_p50_ms": np.median(explained) * 1000,
                    "explain_p99_ms": np.percentile(explained, 99) * 1000,
                    "explain_ratio": np.median(explained) / np.median(predicted),
                }
                for size in (1, 32):
                    floor_rate = throughput(lambda size=size: in_process(images=batches[size]), size, seconds)
                    rate, _ = grpc_load(server, architecture, image, size, 8, seconds)
                    round_figures.update(
                        {f"floor_b{size}": floor_rate, f"c8_b{size}": rate, f"c8_b{size}_ratio": rate / floor_rate}
                    )
                figures.append(round_figures)
    finally:
        stop(process, aio_process)
    return {key: float(np.median([f[key] for f in figures])) for key in figures[0]}


def k8s_batching_parameters(folder: str) -> str:
    """The ConfigMap's batching.config (the official server's recipe in serving/k8s/), written to a file."""
    config_map = next(d for d in yaml.safe_load_all(open(K8S_BATCHING)) if d and d["kind"] == "ConfigMap")
    path = os.path.join(folder, "batching.config")
    with open(path, "w") as f:
        f.write(config_map["data"]["batching.config"])
    return path


def batching_bench(
    architecture: str, image: bytes, seconds: float, rounds: int, serving_dir: str, parameters_file: str, workers: int
) -> dict:
    """{concurrency: figures} for single-image Predict on a server without and one with batching; at each
    concurrency both are measured back to back, medians over `rounds`."""
    servers = {
        batched: start_server(
            serving_dir,
            architecture,
            os.path.join(serving_dir, f"{architecture}-batching-{batched}.log"),
            "--workers",
            str(workers),
            *(["--enable-batching", "--batching-parameters-file", parameters_file] if batched else []),
        )
        for batched in (False, True)
    }
    figures = {concurrency: [] for concurrency in CONCURRENCIES}
    try:
        for _, server in servers.values():
            wait_ready(server, architecture, image)
        for _ in range(rounds):
            for concurrency in CONCURRENCIES:
                measured = {}
                for batched, (_, server) in servers.items():
                    rate, latencies = grpc_load(server, architecture, image, 1, concurrency, seconds)
                    measured[batched] = (rate, np.median(latencies) * 1000, np.percentile(latencies, 99) * 1000)
                (rate, p50, p99), (batched_rate, batched_p50, batched_p99) = measured[False], measured[True]
                figures[concurrency].append(
                    {
                        "rate": rate,
                        "p50_ms": p50,
                        "p99_ms": p99,
                        "batched_rate": batched_rate,
                        "batched_p50_ms": batched_p50,
                        "batched_p99_ms": batched_p99,
                        "rate_ratio": batched_rate / rate,
                        "p50_ratio": batched_p50 / p50,
                        "p99_ratio": batched_p99 / p99,
                    }
                )
    finally:
        stop(*(process for process, _ in servers.values()))
    return {
        concurrency: {key: float(np.median([f[key] for f in rows])) for key in rows[0]}
        for concurrency, rows in figures.items()
    }


def push_and_wait(client: PredictionClient, version_dir: str, base: str, warm_up: bool) -> int:
    """Pushes a copy of the model as a new version (with or without warm-up requests), returns it once the
    server reports it AVAILABLE, which is when a warm-up, if any, has run."""
    add_files = (lambda target: write_warmup_requests(version_dir, target)) if warm_up else None
    version = int(push_atomically(version_dir, base, model_fingerprint(version_dir), version_dir, add_files))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        states = {s.version: s.state for s in client.model_status().model_version_status}
        if states.get(version) == get_model_status_pb2.ModelVersionStatus.State.AVAILABLE:
            return version
        time.sleep(0.05)
    raise TimeoutError(f"version {version} did not become available in 300 s")


def swap_bench(architecture: str, image: bytes, swaps: int, serving_dir: str) -> dict:
    """Median latency of the first request each new version answers, with and without warm-up records."""
    version_dir = os.path.join(serving_dir, architecture, "1")
    base = os.path.join(serving_dir, architecture)
    process, server = start_server(serving_dir, architecture, os.path.join(serving_dir, f"{architecture}-swaps.log"))
    first = {True: [], False: []}
    try:
        with PredictionClient(server, architecture, retries=8) as client:
            client.predict([image])
            for _ in range(swaps):
                for warm_up in (False, True):
                    version = push_and_wait(client, version_dir, base, warm_up)
                    started = time.perf_counter()
                    answered = client.predict([image], version=version)
                    first[warm_up].append(time.perf_counter() - started)
                    assert answered, "no prediction"
            steady = np.median(timed_calls(lambda: client.predict([image]), 1.0))
    finally:
        process.terminate()
        process.wait(timeout=60)
    cold, warm = np.median(first[False]), np.median(first[True])
    return {"cold_ms": cold * 1000, "warm_ms": warm * 1000, "ratio": cold / warm, "steady_ms": steady * 1000}


def serve_aio_main(argv) -> None:
    """`serving_bench.py serve ...`: the aio front in a child process, with `pneumonia serve`'s flags."""
    parser = argparse.ArgumentParser()
    for flag in ("--serving-dir", "--model-name", "--grpc-port", "--rest-port"):
        parser.add_argument(flag, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    serve_aio(args.serving_dir, args.model_name, int(args.grpc_port))


def print_overhead(architectures, image: bytes, args, serving_dir: str) -> None:
    print(
        f"{'architecture':<13}{'floor ms':>9}{'p50 ms':>9}{'p99 ms':>9}{'p50/floor':>10}"
        f"{'aio p50 ms':>11}{'aio/floor':>10}{'server ms':>10}{'empty rpc ms':>13}"
        f"{'explain p50':>12}{'explain p99':>12}{'explain/predict':>16}"
        f"{'floor b1 img/s':>15}{'c8 b1 img/s':>12}{'ratio':>7}"
        f"{'floor b32 img/s':>16}{'c8 b32 img/s':>13}{'ratio':>7}"
    )
    for architecture in architectures:
        r = bench(architecture, image, args.seconds, args.rounds, serving_dir)
        print(
            f"{architecture:<13}{r['floor_ms']:>9.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['p50_ratio']:>10.2f}{r['aio_p50_ms']:>11.1f}{r['aio_ratio']:>10.2f}"
            f"{r['handler_ms']:>10.1f}{r['empty_rpc_ms']:>13.2f}"
            f"{r['explain_p50_ms']:>12.1f}{r['explain_p99_ms']:>12.1f}"
            f"{r['explain_ratio']:>16.2f}"
            f"{r['floor_b1']:>15.1f}{r['c8_b1']:>12.1f}{r['c8_b1_ratio']:>7.2f}"
            f"{r['floor_b32']:>16.1f}{r['c8_b32']:>13.1f}{r['c8_b32_ratio']:>7.2f}",
            flush=True,
        )


def print_batching(architectures, image: bytes, args, serving_dir: str) -> None:
    parameters_file = args.batching_parameters_file or k8s_batching_parameters(serving_dir)
    with open(parameters_file) as f:
        parameters = " ".join(line.strip() for line in f if line.strip() and not line.lstrip().startswith("#"))
    print(
        f"\nbatching: single-image Predict, --workers {args.workers}, without and with --enable-batching ({parameters})"
    )
    print(
        f"{'architecture':<13}{'clients':>8}{'img/s':>8}{'p50 ms':>8}{'p99 ms':>8}"
        f"{'batched img/s':>14}{'p50 ms':>8}{'p99 ms':>8}{'img/s ratio':>12}{'p50 ratio':>10}{'p99 ratio':>10}"
    )
    for architecture in architectures:
        for concurrency, r in batching_bench(
            architecture, image, args.seconds, args.rounds, serving_dir, parameters_file, args.workers
        ).items():
            print(
                f"{architecture:<13}{concurrency:>8}{r['rate']:>8.1f}{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}"
                f"{r['batched_rate']:>14.1f}{r['batched_p50_ms']:>8.1f}{r['batched_p99_ms']:>8.1f}"
                f"{r['rate_ratio']:>12.2f}{r['p50_ratio']:>10.2f}{r['p99_ratio']:>10.2f}",
                flush=True,
            )


def print_swaps(architectures, image: bytes, args, serving_dir: str) -> None:
    print(f"\nfirst request after a hot swap (median of {args.swaps} swaps each; steady: p50 after them)")
    print(f"{'architecture':<13}{'no warm-up ms':>14}{'warm-up ms':>11}{'ratio':>7}{'steady ms':>10}")
    for architecture in architectures:
        r = swap_bench(architecture, image, args.swaps, serving_dir)
        print(
            f"{architecture:<13}{r['cold_ms']:>14.1f}{r['warm_ms']:>11.1f}{r['ratio']:>7.1f}{r['steady_ms']:>10.1f}",
            flush=True,
        )


PARTS = {"overhead": print_overhead, "batching": print_batching, "swaps": print_swaps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architectures", nargs="+", default=["cnn", "densenet121"])
    parser.add_argument("--image-size", type=int, default=128, help="model input size (default 128, the pipeline's)")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each measurement (default 3)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="floor/gRPC pairs per figure; medians are printed (default 3)"
    )
    parser.add_argument(
        "--swaps",
        type=int,
        default=3,
        help="hot swaps with and without warm-up requests; medians are printed (default 3)",
    )
    parser.add_argument("--parts", nargs="+", choices=list(PARTS), default=list(PARTS), help="what to measure")
    parser.add_argument(
        "--batching-parameters-file", help="for the batching part (default: serving/k8s's batching.config)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=max(CONCURRENCIES),
        help="both servers' --workers in the batching part (default 32: a request thread per client; a thread "
        "waits for its batch, so fewer threads than clients cap how many requests a batch can merge)",
    )
    args = parser.parse_args()
    image = sample_image()
    print(
        f"{os.cpu_count()} CPU cores, image {len(image)} bytes, model input {args.image_size} px, "
        f"{args.seconds:g} s per measurement, medians of {args.rounds} rounds"
    )
    with tempfile.TemporaryDirectory() as serving_dir:
        for architecture in args.architectures:
            export(architecture, args.image_size, serving_dir)
        for part in args.parts:
            PARTS[part](args.architectures, image, args, serving_dir)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve_aio_main(sys.argv[2:])
    else:
        main()
