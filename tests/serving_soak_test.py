"""Soak: `pneumonia serve` under two minutes of mixed attack and real traffic at concurrency 16.

Good X-rays (gRPC and REST, batches of 1-3), malformed bytes and JSON, decompression bombs at the model's
pixel budget (decoded: exactly 100 MP) and one row over it, requests over the server's decoded-pixel
budget, headers of 2 gigapixels, bodies over the message cap, and a hot swap to version 2 halfway.
Passes when every good request gets the right probabilities of the version that answered, every bad one
its documented code, the server's peak RSS stays under its bound, and it is healthy afterwards.
"""

import base64
import collections
import glob
import http.client
import json
import os
import random
import re
import signal
import threading
import time

import grpc
import numpy as np
import tensorflow as tf

from serving.client import IMAGE_SIGNATURE
from tests.prepare_test import png_declaring
from tests.serving_fixtures import (
    MODEL_NAME,
    exported_models,
    image_request,
    model_base,
    place_version,  # noqa: F401
    stub_at,
)
from tests.serving_process_test import start

SECONDS = 120
CLIENTS = 16
DECODE_BUDGET = 250_000_000  # two 100 MP images decode at once, a third waits
MESSAGE_CAP = 4 * 2**20
BYTES_PER_BUDGET_PIXEL = 7  # uint8 pixels and their float32 copy (bench/decode_budget_bench.py measures 4.2-5.4)
INTER_OP_THREADS = 16  # as on a 16-core node: TensorFlow's 2 default threads here would cap concurrent decodes too
BOMB_BURSTS = (20, 80)  # seconds into the soak at which six clients send an edge bomb together
SWAP_AT = 60


def status_of(process) -> dict:
    with open(f"/proc/{process.pid}/status") as f:
        return {line.split(":")[0]: line.split(":")[1].strip() for line in f}


def kib(value: str) -> int:
    return int(value.split()[0]) * 1024


class Traffic:
    """The request kinds, each with the answer it must get."""

    def __init__(self, shared_data: str, exported: list):
        paths = sorted(glob.glob(os.path.join(shared_data, "chest_xray/test/*/*.jpeg")))[::40][:14]
        paths += sorted(glob.glob(os.path.join(shared_data, "originals/*/*")))[:2]  # full size
        self.xrays = [open(path, "rb").read() for path in paths]
        self.edge_bomb = tf.io.encode_png(np.zeros((10_000, 10_000, 1), np.uint8)).numpy()  # exactly the budget
        self.over_edge = png_declaring(10_000, 10_001, self.small_png())
        self.gigapixels = png_declaring(46_000, 46_000, self.small_png())
        self.expected = {}  # (version, image) -> probability, from the SavedModel called in-process
        for version, export_dir in enumerate(exported, 1):
            predict = tf.saved_model.load(export_dir).signatures[IMAGE_SIGNATURE]
            for image in self.xrays + [self.edge_bomb]:
                self.expected[(version, image)] = float(predict(images=tf.constant([image]))["probability"][0])

    @staticmethod
    def small_png() -> bytes:
        return tf.io.encode_png(np.full((64, 64, 1), 128, np.uint8)).numpy()


class Soak:
    def __init__(self, traffic: Traffic, grpc_address: str, rest_port: int):
        self.traffic, self.rest_port = traffic, rest_port
        self.service = stub_at(grpc_address)
        self.mismatches, self.counts, self.versions = [], collections.Counter(), collections.defaultdict(list)
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def check(self, kind: str, ok: bool, detail: str) -> None:
        with self.lock:
            self.counts[kind] += 1
            if not ok:
                self.mismatches.append(f"{kind} at {self.elapsed():.0f} s: {detail}")

    def grpc_call(self, images):
        try:
            response = self.service.Predict(image_request(images), timeout=150)
            return grpc.StatusCode.OK, response, ""
        except grpc.RpcError as error:
            return error.code(), None, error.details()

    def good_grpc(self, client: int, rng: random.Random) -> None:
        images = rng.sample(self.traffic.xrays, rng.randint(1, 3))
        code, response, details = self.grpc_call(images)
        if code != grpc.StatusCode.OK:
            return self.check("good gRPC", False, f"{code.name}: {details}")
        version = response.model_spec.version.value
        self.versions[client].append(version)
        self.check(
            "good gRPC",
            self.right(version, images, tf.make_ndarray(response.outputs["probability"])),
            f"version {version} answered other probabilities",
        )

    def right(self, version: int, images, probabilities) -> bool:
        expected = [self.traffic.expected[(version, image)] for image in images]
        return np.allclose(probabilities, expected, atol=1e-4)

    def good_rest(self, client: int, rng: random.Random) -> None:
        image = rng.choice(self.traffic.xrays)
        status, body = self.rest(
            "POST",
            json.dumps(
                {"signature_name": IMAGE_SIGNATURE, "instances": [{"b64": base64.b64encode(image).decode()}]}
            ).encode(),
        )
        if status != 200:
            return self.check("good REST", False, f"HTTP {status}: {body}")
        probability = body["predictions"][0]["probability"]  # REST answers carry no version: either may answer
        self.check(
            "good REST",
            any(self.right(version, [image], [probability]) for version in (1, 2)),
            f"probability {probability} matches neither version",
        )

    def rest(self, method: str, body: bytes = b"", declared_length: int = None):
        connection = http.client.HTTPConnection("127.0.0.1", self.rest_port, timeout=150)
        path = f"/v1/models/{MODEL_NAME}" + (":predict" if method == "POST" else "")
        connection.putrequest(method, path)
        connection.putheader("Content-Length", str(declared_length or len(body)))
        connection.endheaders(body if declared_length is None else None)
        response = connection.getresponse()
        result = response.status, json.loads(response.read())
        connection.close()
        return result

    def refused(self, kind: str, images, code: grpc.StatusCode, words: str = "") -> None:
        got, _, details = self.grpc_call(images)
        self.check(kind, got == code and words in details, f"{got.name}: {details[:200]}")

    def one_request(self, client: int, rng: random.Random) -> None:
        traffic, roll = self.traffic, rng.random()
        if roll < 0.45:
            self.good_grpc(client, rng)
        elif roll < 0.55:
            self.good_rest(client, rng)
        elif roll < 0.65:
            junk = rng.choice(
                [rng.randbytes(rng.randrange(1, 3000)), rng.choice(traffic.xrays)[: rng.randrange(100, 2000)]]
            )  # random, or a cut X-ray
            self.refused("malformed bytes", [junk], grpc.StatusCode.INVALID_ARGUMENT)
        elif roll < 0.70:
            status, body = self.rest("POST", b"{not json")
            self.check("malformed JSON", status == 400 and "not JSON" in body["error"], f"HTTP {status}: {body}")
        elif roll < 0.78:
            self.refused(
                "one row over the model budget",
                [traffic.over_edge],
                grpc.StatusCode.INVALID_ARGUMENT,
                "declared size 10000x10001 exceeds the pixel budget of 100 megapixels",
            )
        elif roll < 0.84:
            self.refused(
                "2 gigapixel header",
                [traffic.gigapixels],
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "more than this server decodes at once",
            )
        elif roll < 0.88:
            self.refused(
                "three edge bombs in one request",
                [traffic.edge_bomb] * 3,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "more than this server decodes at once",
            )
        elif roll < 0.95:
            self.refused(
                "gRPC body over the cap", [rng.randbytes(MESSAGE_CAP + 1024)], grpc.StatusCode.RESOURCE_EXHAUSTED
            )
        else:
            status, body = self.rest("POST", declared_length=MESSAGE_CAP + 1)
            self.check("REST body over the cap", status == 413, f"HTTP {status}: {body}")

    def edge_bomb(self, client: int) -> None:
        code, response, details = self.grpc_call([self.traffic.edge_bomb])
        ok = code == grpc.StatusCode.OK and self.right(
            response.model_spec.version.value,
            [self.traffic.edge_bomb],
            tf.make_ndarray(response.outputs["probability"]),
        )
        self.check("edge bomb (100 MP, decoded)", ok, f"{code.name}: {details}")

    def client(self, index: int) -> None:
        rng, bursts = random.Random(index), list(BOMB_BURSTS) if index < 6 else []
        while self.elapsed() < SECONDS:
            if bursts and self.elapsed() >= bursts[0]:
                bursts.pop(0)
                self.edge_bomb(index)
            else:
                self.one_request(index, rng)


def test_soak_under_attack_with_a_hot_swap(shared_data, model_base, exported_models, monkeypatch):
    traffic = Traffic(shared_data, exported_models)
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", str(INTER_OP_THREADS))  # read by the server process
    process, address, lines = start(
        model_base,
        "--max-decoded-pixels",
        str(DECODE_BUDGET),
        "--max-message-bytes",
        str(MESSAGE_CAP),
        "--max-decode-wait-seconds",
        "150",
        "--poll-seconds",
        "0.5",
    )
    try:
        rest_port = int(re.search(r"REST on [\d.]+:(\d+)", "".join(lines)).group(1))
        start_rss = kib(status_of(process)["VmRSS"])
        soak = Soak(traffic, address, rest_port)
        threads = [threading.Thread(target=soak.client, args=(i,)) for i in range(CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(SWAP_AT)
        place_version(model_base, 2, exported_models[1])
        for thread in threads:
            thread.join()
        peak_rss = kib(status_of(process)["VmHWM"])
        healthy = soak.service.Predict(image_request(traffic.xrays[:1]), timeout=30)
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    examples = {mismatch.split(" at ")[0]: mismatch for mismatch in soak.mismatches}
    assert soak.mismatches == [], f"{len(soak.mismatches)} wrong answers of {dict(soak.counts)}, e.g. {examples}"
    assert len(soak.counts) == 10 and min(soak.counts.values()) >= 3, soak.counts
    assert soak.counts["edge bomb (100 MP, decoded)"] == 12 and soak.counts["good gRPC"] >= 200, soak.counts
    assert all(seen[-1] == 2 and 1 in seen for seen in soak.versions.values()), "the swap did not reach every client"
    bound = start_rss + BYTES_PER_BUDGET_PIXEL * DECODE_BUDGET
    assert peak_rss < bound, f"peak RSS {peak_rss / 2**30:.2f} GiB over the bound {bound / 2**30:.2f} GiB"
    assert healthy.model_spec.version.value == 2 and exit_code == 0
    statuses = collections.Counter(
        json.loads(line.split("serving.requests ", 1)[1])["status"] for line in lines if "serving.requests " in line
    )
    assert set(statuses) <= {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}, statuses
    assert not any("Traceback" in line for line in lines)
    print(
        f"soak: {sum(soak.counts.values())} requests {dict(soak.counts)}; RSS at start {start_rss / 2**30:.2f} GiB, "
        f"peak {peak_rss / 2**30:.2f} GiB, bound {bound / 2**30:.2f} GiB"
    )
