"""REST API: TF Serving's paths and JSON, parity with gRPC, errors as {"error": ...} with the HTTP status."""

import base64
import http.client
import json

import numpy as np
import pytest
import tensorflow as tf

from serving import config
from tests.serving_fixtures import (
    MODEL_NAME,
    exported_models,
    image_request,
    model_base,
    png,
    served,  # noqa: F401
    start_server,
    stub,
)


def rest(server, method: str, path: str, body=None, raw: bytes = None):
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    connection.request(method, path, body=payload, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    result = response.status, json.loads(response.read())
    connection.close()
    return result


def b64(image: bytes) -> dict:
    return {"b64": base64.b64encode(image).decode()}


def test_predict_matches_grpc_in_both_formats(served):
    images = [png(seed=5), png(70, 90, seed=6)]
    grpc_probability = tf.make_ndarray(stub(served).Predict(image_request(images), timeout=10).outputs["probability"])

    status, rows = rest(
        served,
        "POST",
        f"/v1/models/{MODEL_NAME}:predict",
        {"signature_name": "predict_images", "instances": [b64(i) for i in images]},
    )
    assert status == 200
    assert [set(row) for row in rows["predictions"]] == [
        {"probability", "label", "threshold", "decision_score", "ood_score", "ood_threshold", "in_distribution"}
    ] * 2
    np.testing.assert_allclose([row["probability"] for row in rows["predictions"]], grpc_probability, atol=1e-6)
    assert rows["predictions"][0]["label"] in ("NORMAL", "PNEUMONIA")

    status, columns = rest(
        served,
        "POST",
        f"/v1/models/{MODEL_NAME}/versions/1:predict",
        {"signature_name": "predict_images", "inputs": {"images": [b64(i) for i in images]}},
    )
    assert status == 200
    np.testing.assert_allclose(columns["outputs"]["probability"], grpc_probability, atol=1e-6)

    status, labelled = rest(
        served,
        "POST",
        f"/v1/models/{MODEL_NAME}/labels/stable:predict",
        {"signature_name": "predict_images", "instances": [{"images": b64(images[0])}]},
    )
    assert status == 200 and labelled["predictions"][0]["probability"] == pytest.approx(grpc_probability[0], abs=1e-6)


def test_status_and_metadata(served):
    assert rest(served, "GET", f"/v1/models/{MODEL_NAME}") == (
        200,
        {
            "model_version_status": [
                {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
            ]
        },
    )
    assert rest(served, "GET", f"/v1/models/{MODEL_NAME}/versions/1")[1]["model_version_status"][0]["version"] == "1"
    status, metadata = rest(served, "GET", f"/v1/models/{MODEL_NAME}/metadata")
    assert status == 200 and metadata["model_spec"] == {"name": MODEL_NAME, "version": "1"}
    assert set(metadata["metadata"]["signature_def"]["signatureDef"]) == {
        "serving_default",
        "predict_images",
        "explain_images",
        "classify",
    }


def test_errors_carry_the_grpc_meaning_as_http_status(served):
    predict = f"/v1/models/{MODEL_NAME}:predict"
    image = {"signature_name": "predict_images", "instances": [b64(png())]}
    cases = [
        ("POST", "/v1/models/other:predict", image, 404, "unknown model 'other'"),
        ("POST", f"/v1/models/{MODEL_NAME}/versions/9:predict", image, 404, "version 9 is not loaded"),
        ("POST", f"/v1/models/{MODEL_NAME}/labels/canary:predict", image, 404, "no version label 'canary'"),
        ("POST", predict, {"signature_name": "nope", "instances": []}, 404, "no signature 'nope'"),
        ("GET", "/v2/anything", None, 404, "no such path"),
        (
            "POST",
            predict,
            {"signature_name": "predict_images", "instances": [b64(b"not an image")]},
            400,
            "Unknown image file format",
        ),
        ("POST", predict, {"signature_name": "predict_images", "instances": [1.5]}, 400, "input 'images'"),
        ("POST", predict, {"signature_name": "predict_images", "instances": [{"b64": "%%%"}]}, 400, "invalid base64"),
        ("POST", predict, {"signature_name": "predict_images"}, 400, "exactly one of 'instances'"),
        ("POST", predict, {"signature_name": "predict_images", "inputs": {"pixels": [1]}}, 400, "no inputs ['pixels']"),
        ("POST", predict, [1, 2], 400, "must be a JSON object"),
        ("GET", predict, None, 501, "GET is not supported"),
    ]
    for method, path, body, http_status, words in cases:
        status, answer = rest(served, method, path, body)
        assert status == http_status and words in answer["error"], (path, body, status, answer)
    status, answer = rest(served, "POST", predict, raw=b"{not json")
    assert status == 400 and "not JSON" in answer["error"]


def test_oversized_body_is_refused_and_the_server_keeps_serving(model_base):
    server = start_server(config.model_config(MODEL_NAME, model_base), max_message_bytes=64 * 1024)
    try:
        body = {"signature_name": "predict_images", "instances": [b64(png(400, 400))]}
        status, answer = rest(server, "POST", f"/v1/models/{MODEL_NAME}:predict", body)
        assert status == 413 and "exceeds the limit of 65536 bytes" in answer["error"]
        body["instances"] = [b64(png())]
        assert rest(server, "POST", f"/v1/models/{MODEL_NAME}:predict", body)[0] == 200
    finally:
        server.stop(1)
