"""gRPC contract, with the official TF Serving stubs: every RPC, version resolution, every error code."""

import os
import shutil
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
)

from serving import config
from serving.models import State
from tests.serving_fixtures import (
    MODEL_NAME,
    exported_models,
    image_request,
    model_base,  # noqa: F401
    place_version,
    png,
    served,
    start_server,
    stub,
)


def example(image: bytes) -> tf.train.Example:
    return tf.train.Example(
        features=tf.train.Features(feature={"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))})
    )


def pinned_request(version: int):
    request = image_request([png()])
    request.model_spec.version.value = version
    return request


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=10)
    return raised.value


def wait_for(condition, seconds: float = 30.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def status_of(server, version=None) -> dict:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL_NAME
    if version is not None:
        request.model_spec.version.value = version
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=10)
    return {s.version: (s.state, s.status.error_message) for s in response.model_version_status}


def test_predict_on_both_signatures_agrees_and_reports_the_version(served):
    images = [png(seed=1), png(80, 50, seed=2)]
    service = stub(served)
    by_image = service.Predict(image_request(images), timeout=10)
    by_example = service.Predict(
        image_request([example(i).SerializeToString() for i in images], "serving_default", key="examples"), timeout=10
    )
    assert by_image.model_spec.name == MODEL_NAME and by_image.model_spec.version.value == 1
    assert by_image.model_spec.signature_name == "predict_images"
    assert set(by_image.outputs) == {
        "probability",
        "label",
        "threshold",
        "decision_score",
        "ood_score",
        "ood_threshold",
        "in_distribution",
    }
    probability = tf.make_ndarray(by_image.outputs["probability"])
    assert probability.shape == (2,) and np.all((probability >= 0) & (probability <= 1))
    np.testing.assert_allclose(probability, tf.make_ndarray(by_example.outputs["probability"]), atol=1e-6)
    expected = np.where(probability >= 0.5, b"PNEUMONIA", b"NORMAL")
    assert list(tf.make_ndarray(by_image.outputs["label"])) == list(expected)
    explained = service.Predict(image_request(images, "explain_images"), timeout=10).outputs
    np.testing.assert_allclose(tf.make_ndarray(explained["probability"]), probability, atol=1e-6)
    for key in ("gradcam", "gradcam_plus_plus"):
        heatmap = tf.make_ndarray(explained[key])
        assert heatmap.shape == (2, 16, 16) and heatmap.dtype == np.float32 and 0 <= heatmap.min() <= heatmap.max() <= 1

    request = image_request(images)
    request.output_filter.append("probability")
    assert set(service.Predict(request, timeout=10).outputs) == {"probability"}


def test_classify_answers_through_the_classification_signature_only(served):
    """As tensorflow_model_server: Classify runs a signature whose method name is classify, and refuses
    serving_default (a predict signature), the default when the request names none."""
    images = [png(seed=3), png(seed=4)]
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = MODEL_NAME
    request.input.example_list.examples.extend(example(i) for i in images)
    refused = rpc_error(stub(served).Classify, request)
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Expected classification signature method_name to be tensorflow/serving/classify" in refused.details()

    request.model_spec.signature_name = "classify"
    response = stub(served).Classify(request, timeout=10)
    probability = tf.make_ndarray(stub(served).Predict(image_request(images), timeout=10).outputs["probability"])
    assert response.model_spec.version.value == 1 and response.model_spec.signature_name == "classify"
    assert len(response.result.classifications) == 2
    for classification, expected in zip(response.result.classifications, probability):
        assert [c.label for c in classification.classes] == ["NORMAL", "PNEUMONIA"]
        assert [c.score for c in classification.classes] == pytest.approx([1 - expected, expected], abs=1e-6)

    context = classification_pb2.ClassificationRequest(model_spec=request.model_spec)
    context.input.example_list_with_context.context.CopyFrom(example(images[0]))
    context.input.example_list_with_context.examples.add()  # the image comes from the context
    scores = stub(served).Classify(context, timeout=10).result.classifications[0].classes
    assert {c.label: c.score for c in scores}["PNEUMONIA"] == pytest.approx(probability[0], abs=1e-6)


def test_model_metadata_lists_the_signature_defs(served):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL_NAME
    response = stub(served).GetModelMetadata(request, timeout=10)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    assert response.model_spec.version.value == 1
    assert set(signatures.signature_def) == {"serving_default", "predict_images", "explain_images", "classify"}
    images = signatures.signature_def["predict_images"].inputs["images"]
    assert images.dtype == tf.string.as_datatype_enum and [d.size for d in images.tensor_shape.dim] == [-1]
    assert set(signatures.signature_def["serving_default"].outputs) == {
        "probability",
        "label",
        "threshold",
        "decision_score",
        "ood_score",
        "ood_threshold",
        "in_distribution",
    }
    assert set(signatures.signature_def["explain_images"].outputs) == set(
        signatures.signature_def["predict_images"].outputs
    ) | {"gradcam", "gradcam_plus_plus"}

    request.metadata_field[:] = ["something_else"]
    assert rpc_error(stub(served).GetModelMetadata, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_not_found_for_unknown_model_version_label_and_signature(served):
    service = stub(served)
    unknown_model = image_request([png()], model="other")
    unknown_version = pinned_request(7)
    unknown_label = image_request([png()])
    unknown_label.model_spec.version_label = "canary"
    unknown_signature = image_request([png()], signature="nope")
    for request, words in [
        (unknown_model, "unknown model 'other'"),
        (unknown_version, "version 7 is not loaded"),
        (unknown_label, "no version label 'canary'"),
        (unknown_signature, "no signature 'nope'"),
    ]:
        error = rpc_error(service.Predict, request)
        assert error.code() == grpc.StatusCode.NOT_FOUND and words in error.details()
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "other"
    channel = grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}")
    error = rpc_error(model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus, status_request)
    assert error.code() == grpc.StatusCode.NOT_FOUND


def malformed_requests():
    """(request, words the INVALID_ARGUMENT message must contain) for each kind of bad input."""
    wrong_dtype = image_request([png()])
    wrong_dtype.inputs["images"].CopyFrom(tf.make_tensor_proto([1.0, 2.0]))
    wrong_shape = image_request([png()])
    wrong_shape.inputs["images"].CopyFrom(tf.make_tensor_proto([[png()]], dtype=tf.string))
    truncated_content = image_request([png()])
    truncated_content.inputs["images"].CopyFrom(
        tensor_pb2.TensorProto(  # 7 bytes cannot hold float32 values
            dtype=types_pb2.DT_FLOAT,
            tensor_content=b"1234567",
            tensor_shape=truncated_content.inputs["images"].tensor_shape,
        )
    )
    negative_dim = image_request([png()])
    negative_dim.inputs["images"].tensor_shape.dim[0].size = -4
    no_dtype = image_request([png()])
    no_dtype.inputs["images"].dtype = types_pb2.DT_INVALID
    missing = image_request([png()])
    del missing.inputs["images"]
    extra = image_request([png()])
    extra.inputs["pixels"].CopyFrom(tf.make_tensor_proto([1.0]))
    return [
        (wrong_dtype, "input 'images' must be string, got float32"),
        (wrong_shape, "input 'images' must have shape [None], got [1, 1]"),
        (truncated_content, "input 'images' is not a well-formed TensorProto"),
        (negative_dim, "input 'images' is not a well-formed TensorProto: negative dimension"),
        (no_dtype, "input 'images' is not a well-formed TensorProto"),
        (missing, "takes inputs ['images'], got []"),
        (extra, "takes inputs ['images'], got ['images', 'pixels']"),
        (image_request([b"not an image"]), "Unknown image file format"),
        (image_request([png()[:20]]), "input rejected by the model"),  # truncated PNG
    ]


def test_invalid_argument_names_the_problem(served):
    service = stub(served)
    for request, words in malformed_requests():
        error = rpc_error(service.Predict, request)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (words, error)
        assert words in error.details(), error.details()
    assert service.Predict(image_request([png()]), timeout=10).outputs["probability"]


def test_messages_over_the_cap_are_resource_exhausted(model_base):
    server = start_server(config.model_config(MODEL_NAME, model_base), rest_port=None, max_message_bytes=64 * 1024)
    try:
        big = png(400, 400)  # random pixels barely compress: ~160 kB
        error = rpc_error(stub(server).Predict, image_request([big]))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub(server).Predict(image_request([png()]), timeout=10).model_spec.version.value == 1
    finally:
        server.stop(1)


def test_version_labels_specific_policy_and_latest_default(model_base, exported_models):
    place_version(model_base, 2, exported_models[1])
    place_version(model_base, 3, exported_models[0])
    model = config.model_config(
        MODEL_NAME, model_base, policy="specific", versions=[1, 2], labels={"stable": 1, "canary": 2}
    )
    server = start_server(model, rest_port=None)
    try:
        service = stub(server)
        assert status_of(server) == {1: (State.AVAILABLE, ""), 2: (State.AVAILABLE, "")}
        assert service.Predict(image_request([png()]), timeout=10).model_spec.version.value == 2
        for label, version in [("stable", 1), ("canary", 2)]:
            request = image_request([png()])
            request.model_spec.version_label = label
            assert service.Predict(request, timeout=10).model_spec.version.value == version
        one = service.Predict(pinned_request(1), timeout=10).outputs["probability"]
        latest = service.Predict(image_request([png()]), timeout=10).outputs["probability"]
        assert tf.make_ndarray(one) != pytest.approx(tf.make_ndarray(latest), abs=1e-7)  # really another model
        error = rpc_error(service.Predict, pinned_request(3))
        assert error.code() == grpc.StatusCode.NOT_FOUND  # on disk, but not in the specific policy
        assert status_of(server, 2) == {2: (State.AVAILABLE, "")}
    finally:
        server.stop(1)

    server = start_server(config.model_config(MODEL_NAME, model_base, policy="all"), rest_port=None)
    try:
        assert set(status_of(server)) == {1, 2, 3}
    finally:
        server.stop(1)


@pytest.mark.filterwarnings("ignore:Unexpected end-group tag")  # protobuf on the deliberately broken graph
def test_new_version_is_swapped_in_and_a_broken_one_is_reported_not_served(served, model_base, exported_models):
    place_version(model_base, 2, exported_models[1])
    wait_for(lambda: status_of(served).get(1, (None,))[0] == State.END)
    assert status_of(served) == {1: (State.END, ""), 2: (State.AVAILABLE, "")}
    assert stub(served).Predict(image_request([png()]), timeout=10).model_spec.version.value == 2

    broken = os.path.join(model_base, ".staging-3")
    os.makedirs(os.path.join(broken, "variables"))
    with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
        f.write(b"this is not a SavedModel")
    os.rename(broken, os.path.join(model_base, "3"))
    wait_for(lambda: status_of(served).get(3, (None,))[0] == State.END)
    state, error = status_of(served)[3]
    assert "failed to load" in error and os.path.join(model_base, "3") in error
    assert status_of(served)[2] == (State.AVAILABLE, "")
    assert stub(served).Predict(image_request([png()]), timeout=10).model_spec.version.value == 2

    for version in (3, 2):  # a rollback: the newest versions disappear, version 1 is served again
        shutil.rmtree(os.path.join(model_base, str(version)))
    wait_for(lambda: status_of(served)[2][0] == State.END)
    assert status_of(served)[1] == (State.AVAILABLE, "")
    assert stub(served).Predict(image_request([png()]), timeout=10).model_spec.version.value == 1
