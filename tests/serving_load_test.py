"""Under load: a hot swap drops no request, and a flood of malformed requests leaves the server healthy."""

import collections
import random
import threading
import time

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from serving import config, repository
from tests.serving_fixtures import MODEL_NAME, exported_models, image_request, png, start_server, stub  # noqa: F401

CLIENTS = 8
REQUESTS = 2000


def test_hot_swap_under_load_drops_nothing(tmp_path, exported_models):
    base = str(tmp_path / "serving" / MODEL_NAME)
    first = int(repository.push_atomically(exported_models[0], base, "first", exported_models[0]))
    server = start_server(config.model_config(MODEL_NAME, base), rest_port=None, poll_seconds=0.1)
    request = image_request([png()])
    versions_seen = collections.defaultdict(list)  # client -> version of each answer, in order
    failures, done, pushed = [], threading.Event(), {}

    def answered() -> int:
        return sum(map(len, versions_seen.values()))

    def client(index: int):
        service = stub(server)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not done.is_set():
            try:
                versions_seen[index].append(service.Predict(request, timeout=30).model_spec.version.value)
            except grpc.RpcError as error:
                failures.append(f"{error.code().name}: {error.details()}")
            if answered() >= REQUESTS and all(pushed.get("version") in seen for seen in versions_seen.values()):
                done.set()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        while answered() < REQUESTS // 4 and any(thread.is_alive() for thread in threads):
            time.sleep(0.01)
        pushed["version"] = int(repository.push_atomically(exported_models[1], base, "second", exported_models[1]))
        for thread in threads:
            thread.join()
    finally:
        server.stop(grace_seconds=5)

    second = pushed["version"]
    assert second > first
    assert failures == []
    assert done.is_set(), "the new version did not reach every client within 90 s"
    assert sum(map(len, versions_seen.values())) >= REQUESTS
    for seen in versions_seen.values():
        assert set(seen) == {first, second}
        switch = seen.index(second)
        assert seen[switch:] == [second] * (len(seen) - switch), "a client got the old version after the new one"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def malformed(rng: random.Random) -> predict_pb2.PredictRequest:
    """One of several kinds of bad request: bad bytes, dtype, shape, names, proto, model, signature."""
    kind = rng.randrange(8)
    if kind == 0:
        return image_request([rng.randbytes(rng.randrange(1, 200))])
    if kind == 1:
        return image_request([png()[: rng.randrange(8, 100)]])
    request = image_request([png()])
    if kind == 2:
        request.inputs["images"].CopyFrom(tf.make_tensor_proto([rng.random()]))
    elif kind == 3:
        request.inputs["images"].CopyFrom(tf.make_tensor_proto([[b"x"]]))
    elif kind == 4:
        request.inputs["pixels"].CopyFrom(request.inputs.pop("images"))
    elif kind == 5:
        request.inputs["images"].tensor_shape.dim[0].size = -rng.randrange(1, 9)
    elif kind == 6:
        request.model_spec.name = "missing"
    else:
        request.model_spec.signature_name = "missing"
    return request


def test_malformed_flood_then_a_valid_request_succeeds_and_memory_stays_flat(tmp_path, exported_models):
    base = str(tmp_path / "serving" / MODEL_NAME)
    repository.push_atomically(exported_models[0], base, "first", exported_models[0])
    server = start_server(config.model_config(MODEL_NAME, base), rest_port=None)
    rng = random.Random(7)
    service = stub(server)

    def flood(count: int):
        codes = collections.Counter()
        for _ in range(count):
            try:
                service.Predict(malformed(rng), timeout=10)
                codes["OK"] += 1
            except grpc.RpcError as error:
                codes[error.code().name] += 1
        return codes

    try:
        flood(200)  # let allocators and caches settle before measuring
        before = rss_bytes()
        codes = flood(1000)
        grown = rss_bytes() - before
        answer = service.Predict(image_request([png()]), timeout=10)
    finally:
        server.stop(1)
    assert set(codes) == {"INVALID_ARGUMENT", "NOT_FOUND"} and sum(codes.values()) == 1000
    assert answer.model_spec.version.value > 0 and tf.make_ndarray(answer.outputs["probability"]).shape == (1,)
    assert grown < 25 * 1024 * 1024, f"memory grew by {grown / 2**20:.1f} MiB over 1000 malformed requests"
