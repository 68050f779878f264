"""Server-side batching (`--enable-batching`): TF Serving's parameters and refusals, merged requests answering
their own callers over gRPC and REST, a bad input failing alone, padding, a full queue, a hot swap mid-batch."""

import concurrent.futures
import os
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import classification_pb2

from pneumonia.cli import main
from serving import batching, cli, config
from serving.batching import Batcher, BatchingOptions, BatchShape
from serving.errors import ServingError
from serving.pixels import PixelBudget
from tests.serving_fixtures import (
    MODEL_NAME,
    exported_models,
    image_request,
    model_base,  # noqa: F401
    place_version,
    png,
    start_server,
    stub,
)
from tests.serving_grpc_test import example, wait_for
from tests.serving_rest_test import b64, rest

LONG = 60_000_000  # a batch timeout (us) no test waits for: a batch runs because it is full or closed


def concurrently(*calls):
    """Starts every call at once on its own thread; their results (or the exceptions they raised), in order."""
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        futures = [pool.submit(call) for call in calls]
        return [future.exception() or future.result() for future in futures]


def batched_server(model_base, **options):
    return start_server(
        config.model_config(MODEL_NAME, model_base), batching=BatchingOptions(num_batch_threads=1, **options)
    )


@pytest.fixture(scope="module")
def solo(exported_models):
    """Model 1's signatures called in-process, one request at a time: what each caller must get back."""
    return tf.saved_model.load(exported_models[0]).signatures


def probability(response) -> np.ndarray:
    return tf.make_ndarray(response.outputs["probability"])


def solo_probability(solo, images) -> np.ndarray:
    return solo["predict_images"](images=tf.constant(images))["probability"].numpy()


# The parameters file


def parameters_file(tmp_path, text: str) -> str:
    path = tmp_path / "batching.config"
    path.write_text(text)
    return str(path)


def test_tf_serving_defaults_fill_what_the_file_leaves_unset(tmp_path):
    options = batching.read_parameters(parameters_file(tmp_path, "max_batch_size { value: 16 }"))
    assert options == BatchingOptions(max_batch_size=16, thread_pool_name="batch_threads")
    assert (options.batch_timeout_micros, options.max_enqueued_batches) == (0, 10)
    assert options.num_batch_threads == len(os.sched_getaffinity(0)) and options.allowed_batch_sizes == ()
    assert BatchingOptions().max_batch_size == 1000  # --enable-batching without a file
    assert BatchingOptions(max_batch_size=8, allowed_batch_sizes=(2, 4, 8)).padded_size(3) == 4
    assert BatchingOptions().padded_size(3) == 3


@pytest.mark.parametrize(
    "text, words",
    [
        ("max_batch_sise { value: 3 }", 'has no field named "max_batch_sise"'),
        ("max_batch_size { value: 0 }", "max_batch_size must be positive; was 0"),
        ("num_batch_threads { value: -2 }", "num_batch_threads must be positive; was -2"),
        ("max_enqueued_batches { value: 0 }", "max_enqueued_batches must be positive; was 0"),
        ("batch_timeout_micros { value: -1 }", "batch_timeout_micros must be non-negative; was -1"),
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: 4 allowed_batch_sizes: 2 allowed_batch_sizes: 8",
            "allowed_batch_sizes entries must be monotonically increasing",
        ),
        ("max_batch_size { value: 8 } allowed_batch_sizes: 0 allowed_batch_sizes: 8", "entries must be positive"),
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4",
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8",
        ),
        ("allowed_batch_sizes: 32", "last entry was 32; expected 1000"),  # the default max_batch_size
        ("enable_large_batch_splitting { value: true }", "enable_large_batch_splitting is not supported"),
    ],
)
def test_a_file_tf_serving_would_refuse_is_refused_in_one_line_before_serving(tmp_path, capsys, text, words):
    path = parameters_file(tmp_path, text)
    with pytest.raises(ValueError, match=words) as refused:
        batching.read_parameters(path)
    assert str(refused.value).startswith(f"batching parameters {path}") and "\n" not in str(refused.value)
    serving_dir = str(tmp_path / "serving")
    with pytest.raises(SystemExit) as stopped:  # refused before any model is loaded or port bound
        main(["serve", "--serving-dir", serving_dir, "--enable-batching", "--batching-parameters-file", path])
    assert str(stopped.value) == f"error: {refused.value}"
    assert capsys.readouterr().out == ""


def test_a_parameters_file_without_enable_batching_is_refused_and_the_official_backend_gets_both(tmp_path):
    path = parameters_file(tmp_path, "max_batch_size { value: 32 } batch_timeout_micros { value: 2000 }")
    with pytest.raises(SystemExit, match="--batching-parameters-file is set without --enable-batching"):
        main(["serve", "--serving-dir", str(tmp_path), "--batching-parameters-file", path])
    parser = cli.argparse.ArgumentParser()
    cli.add_commands(parser.add_subparsers())
    args = parser.parse_args(["serve", "--enable-batching", "--batching-parameters-file", path])
    assert cli.tfserving_command(args, "models.config")[-2:] == [
        "--enable_batching=true",
        f"--batching_parameters_file={path}",
    ]
    assert cli.batching_options(args) == BatchingOptions(
        max_batch_size=32, batch_timeout_micros=2000, thread_pool_name="batch_threads"
    )


# The scheduler alone, on a model that echoes its inputs


class Version:
    """An owner of queues, as a LoadedVersion is."""


V1, V2 = Version(), Version()


def echo(seen: list):
    """A `run` that records each merged batch and answers every example with itself."""

    def run(inputs):
        seen.append(list(inputs["x"]))
        if b"bad" in list(inputs["x"]):
            raise ValueError("bad example in the batch")
        return {"echo": inputs["x"], "row": np.arange(len(inputs["x"]))}

    return run


def rows(*values: bytes):
    return {"x": np.array(values, dtype=object)}


def test_padding_repeats_the_first_example_of_the_last_request_and_is_dropped_from_the_answers():
    batcher, seen = (
        Batcher(BatchingOptions(max_batch_size=4, batch_timeout_micros=LONG, allowed_batch_sizes=(2, 4))),
        [],
    )
    try:
        first = batcher.submit(V1, "sig", echo(seen), rows(b"a"))
        second = batcher.submit(V1, "sig", echo(seen), rows(b"b1", b"b2"))
        assert batcher.queued == 2 and not first.done()
        batcher.close(V1)  # an unloading version's batch runs now
        assert list(first.result(10)["echo"]) == [b"a"] and list(second.result(10)["echo"]) == [b"b1", b"b2"]
        assert list(second.result()["row"]) == [1, 2]
        assert seen == [[b"a", b"b1", b"b2", b"b1"]] and batcher.history == {BatchShape(2, 3, 4): 1}
        last, empty = batcher.submit(V1, "sig", echo(seen), rows(b"c")), batcher.submit(V1, "sig", echo(seen), rows())
        assert list(last.result(10)["echo"]) == [b"c"] and list(empty.result(10)["echo"]) == []
        assert seen[1] == [b"c", b"c"]  # padded from the last request that has an example
    finally:
        batcher.stop()


def test_a_full_queue_is_unavailable_and_a_request_over_max_batch_size_invalid_as_in_tf_serving():
    batcher = Batcher(BatchingOptions(max_batch_size=2, max_enqueued_batches=1, batch_timeout_micros=LONG))
    seen = []
    try:
        waiting = batcher.submit(V1, "sig", echo(seen), rows(b"a"))
        with pytest.raises(ServingError) as full:
            batcher.submit(V1, "sig", echo(seen), rows(b"b1", b"b2"))  # does not fit the open batch
        assert full.value.code == grpc.StatusCode.UNAVAILABLE and full.value.message == (
            "The batch scheduling queue to which this task was submitted is full; currently 1 batches enqueued "
            "and max_enqueued_batches is 1"
        )
        other = batcher.submit(V2, "sig", echo(seen), rows(b"z"))  # another version has its own queue
        fills = batcher.submit(V1, "sig", echo(seen), rows(b"c"))  # fits: the batch is full, so it runs
        assert [list(f.result(10)["echo"]) for f in (waiting, fills)] == [[b"a"], [b"c"]] and not other.done()
        with pytest.raises(ServingError, match="^Task size 3 is larger than maximum input batch size 2$") as large:
            batcher.submit(V1, "sig", echo(seen), rows(b"1", b"2", b"3"))
        assert large.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ServingError, match="must have equal 0th-dimension size"):
            batcher.submit(V1, "sig", echo(seen), {"x": rows(b"1")["x"], "y": np.zeros(2)})
    finally:
        batcher.stop()  # runs what is still queued
    assert list(other.result(10)["echo"]) == [b"z"]


def test_a_batch_that_fails_is_run_again_request_by_request_so_only_the_bad_one_fails():
    batcher, seen = Batcher(BatchingOptions(max_batch_size=3, batch_timeout_micros=LONG)), []
    try:
        futures = [batcher.submit(V1, "sig", echo(seen), rows(value)) for value in (b"good1", b"bad", b"good2")]
        assert list(futures[0].result(10)["echo"]) == [b"good1"] and list(futures[2].result(10)["echo"]) == [b"good2"]
        with pytest.raises(ValueError, match="bad example"):
            futures[1].result(10)
        assert seen == [[b"good1", b"bad", b"good2"], [b"good1"], [b"bad"], [b"good2"]]
        assert batcher.history == {BatchShape(3, 3, 3): 1, BatchShape(1, 1, 1): 3}
    finally:
        batcher.stop()


# A served model


def test_concurrent_requests_are_merged_and_each_caller_gets_its_own_answer(model_base, solo):
    """Four Predict callers (one over REST) fill one batch of 5 images; two explain_images callers and two
    Classify callers fill theirs: three model calls for eight requests, each answer the caller's own rows."""
    server = batched_server(model_base, max_batch_size=5, batch_timeout_micros=LONG)
    images = [png(seed=seed) for seed in range(10, 15)]
    service = stub(server)

    def classify(examples):
        request = classification_pb2.ClassificationRequest()
        request.model_spec.name, request.model_spec.signature_name = MODEL_NAME, "classify"
        request.input.example_list.examples.extend(example(image) for image in examples)
        return service.Classify(request, timeout=30)

    def rest_predict(chunk):
        body = {"signature_name": "predict_images", "instances": [b64(image) for image in chunk]}
        return rest(server, "POST", f"/v1/models/{MODEL_NAME}:predict", body)

    predict_chunks, explain_chunks, classify_chunks = (
        [images[0:1], images[1:3], images[4:5]],
        [images[:2], images[2:]],
        [images[:4], images[4:]],
    )
    try:
        answers = concurrently(
            *(lambda c=c: service.Predict(image_request(c), timeout=30) for c in predict_chunks),
            lambda: rest_predict(images[3:4]),
            *(lambda c=c: service.Predict(image_request(c, "explain_images"), timeout=30) for c in explain_chunks),
            *(lambda c=c: classify(c) for c in classify_chunks),
        )
        history = dict(server.batcher.history)
    finally:
        server.stop(1)
    predicted, (status, body), explained, classified = answers[:3], answers[3], answers[4:6], answers[6:]
    for chunk, response in zip(predict_chunks, predicted):
        np.testing.assert_allclose(probability(response), solo_probability(solo, chunk), atol=1e-6)
        assert response.model_spec.version.value == 1
    assert status == 200
    rest_probabilities = [row["probability"] for row in body["predictions"]]
    np.testing.assert_allclose(rest_probabilities, solo_probability(solo, images[3:4]), atol=1e-6)
    for chunk, response in zip(explain_chunks, explained):
        alone = solo["explain_images"](images=tf.constant(chunk))
        for key in ("probability", "gradcam", "gradcam_plus_plus"):
            np.testing.assert_allclose(tf.make_ndarray(response.outputs[key]), alone[key], atol=1e-5)
    for chunk, response in zip(classify_chunks, classified):
        scores = [[c.score for c in row.classes] for row in response.result.classifications]
        serialized = tf.constant([example(image).SerializeToString() for image in chunk])
        np.testing.assert_allclose(scores, solo["classify"](inputs=serialized)["scores"], atol=1e-6)
    assert history == {BatchShape(4, 5, 5): 1, BatchShape(2, 5, 5): 2}


def test_a_bad_input_in_a_batch_fails_alone_with_its_own_status(model_base, solo):
    server = batched_server(model_base, max_batch_size=3, batch_timeout_micros=LONG)
    good = [png(seed=20), png(seed=21)]
    service = stub(server)
    body = {"signature_name": "predict_images", "instances": [b64(good[1])]}
    try:
        first, bad, (status, answer) = concurrently(
            lambda: service.Predict(image_request(good[:1]), timeout=30),
            lambda: service.Predict(image_request([b"not an image"]), timeout=30),
            lambda: rest(server, "POST", f"/v1/models/{MODEL_NAME}:predict", body),
        )
        history = dict(server.batcher.history)
    finally:
        server.stop(1)
    np.testing.assert_allclose(probability(first), solo_probability(solo, good[:1]), atol=1e-6)
    assert status == 200
    np.testing.assert_allclose([answer["predictions"][0]["probability"]], solo_probability(solo, good[1:]), atol=1e-6)
    assert isinstance(bad, grpc.RpcError) and bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Unknown image file format" in bad.details()
    assert history == {BatchShape(3, 3, 3): 1, BatchShape(1, 1, 1): 3}


def test_padding_to_allowed_batch_sizes_and_the_pixel_budget_still_hold(model_base, solo):
    server = start_server(
        config.model_config(MODEL_NAME, model_base),
        budget=PixelBudget(max_pixels=1_000_000, max_wait_seconds=0.3),
        batching=BatchingOptions(max_batch_size=4, allowed_batch_sizes=(2, 4), num_batch_threads=1),
    )
    images, big = [png(seed=seed) for seed in range(30, 33)], png(800, 800)
    service = stub(server)
    try:
        three = service.Predict(image_request(images), timeout=30)
        one = service.Predict(image_request(images[:1]), timeout=30)
        with pytest.raises(grpc.RpcError) as over_budget:
            service.Predict(image_request([big, big]), timeout=30)
        history = dict(server.batcher.history)
    finally:
        server.stop(1)
    np.testing.assert_allclose(probability(three), solo_probability(solo, images), atol=1e-6)
    np.testing.assert_allclose(probability(one), solo_probability(solo, images[:1]), atol=1e-6)
    assert over_budget.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert history == {BatchShape(1, 3, 4): 1, BatchShape(1, 1, 2): 1}


def test_a_full_queue_answers_unavailable_over_grpc_and_503_over_rest(model_base):
    server = batched_server(model_base, max_batch_size=2, max_enqueued_batches=1, batch_timeout_micros=LONG)
    service, two = stub(server), [png(seed=40), png(seed=41)]
    waiting = {}
    caller = threading.Thread(target=lambda: waiting.update(answer=service.Predict(image_request(two[:1]), timeout=30)))
    try:
        caller.start()
        wait_for(lambda: server.batcher.queued == 1)
        with pytest.raises(grpc.RpcError) as full:
            service.Predict(image_request(two), timeout=30)
        status, body = rest(
            server,
            "POST",
            f"/v1/models/{MODEL_NAME}:predict",
            {"signature_name": "predict_images", "instances": [b64(i) for i in two]},
        )
        with pytest.raises(grpc.RpcError) as large:
            service.Predict(image_request(two + two[:1]), timeout=30)
        filled = service.Predict(image_request(two[1:]), timeout=30)  # completes the waiting batch
        caller.join(30)
    finally:
        server.stop(1)
    assert full.value.code() == grpc.StatusCode.UNAVAILABLE and "queue" in full.value.details()
    assert status == 503 and "is full" in body["error"]
    assert large.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert large.value.details() == "Task size 3 is larger than maximum input batch size 2"
    assert probability(waiting["answer"]).shape == (1,) and probability(filled).shape == (1,)


def test_a_hot_swap_mid_batch_loses_nothing_and_the_batch_answers_with_its_version(model_base, exported_models, solo):
    """Three requests wait in version 1's batch when version 2 arrives; unloading version 1 runs its batch at
    once (long before its timeout), with version 1's weights, and later requests go to version 2."""
    server = batched_server(model_base, max_batch_size=8, batch_timeout_micros=LONG)
    images = [png(seed=seed) for seed in range(50, 53)]
    service = stub(server)
    answers = []
    callers = [
        threading.Thread(
            target=lambda i=i: answers.append(service.Predict(image_request(images[i : i + 1]), timeout=60))
        )
        for i in range(3)
    ]
    try:
        for caller in callers:
            caller.start()
        wait_for(lambda: server.batcher.queued == 3)
        started = time.monotonic()
        place_version(model_base, 2, exported_models[1])
        for caller in callers:
            caller.join(60)
        swap_seconds = time.monotonic() - started
        after = service.Predict(image_request((images * 3)[:8]), timeout=30)  # a full batch: runs at once
        history = dict(server.batcher.history)
    finally:
        server.stop(1)
    assert len(answers) == 3 and {a.model_spec.version.value for a in answers} == {1}
    expected = sorted(solo_probability(solo, images))
    assert sorted(float(probability(a)[0]) for a in answers) == pytest.approx(expected, abs=1e-6)  # version 1's
    assert swap_seconds < 30 and after.model_spec.version.value == 2
    assert history == {BatchShape(3, 3, 3): 1, BatchShape(1, 8, 8): 1}
