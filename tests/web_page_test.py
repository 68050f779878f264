"""The web page at / on the REST port, in a real browser: Debian's chromium, headless, driven by Playwright.

Every answer the page shows is checked against the gRPC answer for the same file. Screenshots of each
state go to test-artifacts/web/ (git-ignored). Under CI=true a missing browser fails instead of skipping.
"""

import base64
import glob
import http.client
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from fixtures import dicom_files as make
from serving import config, dicom
from serving.rest import DICOM_PATH
from tests.serving_fixtures import (
    MODEL_NAME,
    export_tiny_model,
    image_request,
    place_version,
    start_server,
    stub,
    xray_guard,
)
from tests.web_harness import (
    chromium,
    ct_like_slice,
    missing_browser,
    photograph,
    screenshot,
    text_file,
    wait_for_answers,
)

POLL_MS = 300  # the page's status poll, shortened so a pushed version shows within a second


@pytest.fixture(scope="module")
def browser():
    reason = missing_browser()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser tests cannot run: {reason}; CI must run them")
        pytest.skip(reason)
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def site(shared_data, tmp_path_factory):
    """A server for <base>/1 (label stable=1), keeping the two newest versions; models whose OOD guard was
    fitted on real X-rays, so X-rays pass and photographs are flagged."""
    root = tmp_path_factory.mktemp("web")
    models = [
        export_tiny_model(
            str(root / f"model{seed}"), str(root / f"work{seed}"), seed, lambda model: xray_guard(model, shared_data)
        )
        for seed in (1, 2)
    ]
    base = str(root / "serving" / MODEL_NAME)
    os.makedirs(base)
    place_version(base, 1, models[0])
    server = start_server(config.model_config(MODEL_NAME, base, num_latest=2, labels={"stable": 1}))
    yield {"server": server, "base": base, "models": models, "files": str(root)}
    server.stop(grace_seconds=1)


@pytest.fixture
def page(browser, site):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    opened = context.new_page()
    requested = []
    opened.on("request", lambda request: requested.append(request.url))
    opened.goto(f"http://127.0.0.1:{site['server'].rest_port}/?poll_ms={POLL_MS}")
    opened.wait_for_selector("#server-status[data-state='ok']")
    yield opened
    context.close()
    origin = f"http://127.0.0.1:{site['server'].rest_port}/"
    assert all(url.startswith((origin, "blob:")) for url in requested), "the page loaded something from elsewhere"


def explained_by_grpc(server, path: str, version=None) -> dict:
    request = image_request([open(path, "rb").read()], signature="explain_images")
    if version is not None:
        request.model_spec.version.value = version
    response = stub(server).Predict(request, timeout=30)
    outputs = {key: tf.make_ndarray(value)[0] for key, value in response.outputs.items()}
    return {**outputs, "version": response.model_spec.version.value}


def in_distribution_xray(server, shared_data) -> str:
    """The first Kermany test X-ray the model's guard passes (most do: its threshold is the 99.5th percentile)."""
    for path in sorted(glob.glob(f"{shared_data}/chest_xray/test/PNEUMONIA/*.jpeg"))[:20]:
        if explained_by_grpc(server, path)["in_distribution"]:
            return path
    raise AssertionError("the guard flags every X-ray tried")


def card(page, index: int = 0):
    return page.locator(".result").nth(index)


def heatmap_pixels_drawn(page, index: int = 0) -> int:
    """How many pixels of the card's heatmap canvas are not fully transparent."""
    return page.evaluate(
        """index => {
        const canvas = document.querySelectorAll('.result .heatmap')[index];
        const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
        let drawn = 0;
        for (let i = 3; i < pixels.length; i += 4) drawn += pixels[i] > 0;
        return drawn;
    }""",
        index,
    )


def test_an_xray_shows_the_grpc_answer_and_a_heatmap(page, site, shared_data):
    server = site["server"]
    path = in_distribution_xray(server, shared_data)
    expected = explained_by_grpc(server, path)
    assert expected["gradcam"].max() > 0, "the model's map is blank: nothing for the page to draw"
    page.set_input_files("#file-input", path)
    wait_for_answers(page, 1)
    result = card(page)
    assert result.get_attribute("data-state") == "done"
    shown = result.locator(".probability-value")
    assert float(shown.get_attribute("data-probability")) == pytest.approx(float(expected["probability"]), abs=1e-6)
    assert shown.inner_text() == f"{expected['probability']:.4f}"
    assert result.locator(".class-name").inner_text() == expected["label"].decode()
    assert result.locator(".class-name").is_visible() and not result.locator(".ood-warning").is_visible()
    assert result.locator(".threshold-text").inner_text() == f"threshold {expected['threshold']:.4f}"
    assert f"version {expected['version']}" in result.locator(".provenance").inner_text()
    result.locator(".heatmap[data-drawn]").wait_for(state="attached")
    assert heatmap_pixels_drawn(page) > 0
    assert page.locator("#decision-support").is_visible()
    screenshot(page, "xray")

    result.locator(".opacity").fill("100")
    assert result.locator(".heatmap").evaluate("canvas => canvas.style.opacity") == "1"
    result.locator(".heatmap-method").select_option("gradcam_plus_plus")
    assert heatmap_pixels_drawn(page) > 0
    screenshot(page, "xray-gradcam-plus-plus")


def test_a_photograph_gets_the_ood_warning_instead_of_a_class(page, site):
    path = photograph(site["files"])
    assert not explained_by_grpc(site["server"], path)["in_distribution"]
    page.set_input_files("#file-input", path)
    wait_for_answers(page, 1)
    result = card(page)
    assert result.get_attribute("data-state") == "ood"
    assert result.locator(".ood-warning").is_visible()
    assert "Not like the X-rays the model was trained on" in result.locator(".ood-warning").inner_text()
    assert not result.locator(".class-line").is_visible()
    screenshot(page, "photograph-ood")


def test_bad_files_fail_one_by_one_and_the_page_keeps_working(page, site, shared_data):
    xray = sorted(glob.glob(f"{shared_data}/chest_xray/test/NORMAL/*.jpeg"))[0]
    page.set_input_files("#file-input", [text_file(site["files"]), xray])
    wait_for_answers(page, 2)
    text_card, xray_card = card(page, 1), card(page, 0)  # newest first
    assert text_card.get_attribute("data-state") == "error"
    assert "notes.txt is not an image" in text_card.locator(".message").inner_text()
    assert xray_card.get_attribute("data-state") in ("done", "ood")
    screenshot(page, "text-file-error")

    page.route("**/v1/**", lambda route: route.abort())  # the server goes away
    page.set_input_files("#file-input", xray)
    wait_for_answers(page, 3)
    assert "unavailable" in card(page).locator(".message").inner_text()
    page.unroute("**/v1/**")
    page.set_input_files("#file-input", xray)
    wait_for_answers(page, 4)
    assert card(page).get_attribute("data-state") in ("done", "ood")
    screenshot(page, "server-unavailable")


def test_a_dicom_film_gets_the_answer_of_the_modules_png_and_a_ct_is_refused(page, site, shared_data, tmp_path):
    server = site["server"]
    pixels = make.xray_pixels(in_distribution_xray(server, shared_data))
    film = make.twelve_bit(pixels)  # 12 bits with a modality rescale and a window
    film_path, ct_path, png_path = tmp_path / "IM0001", tmp_path / "ct.dcm", tmp_path / "IM0001.png"
    film_path.write_bytes(make.to_bytes(film))  # no extension: the page knows it by its DICM preamble
    ct_path.write_bytes(make.to_bytes(make.ct_slice(pixels)))
    png_path.write_bytes(dicom.dicom_to_png(film_path.read_bytes()))
    expected = explained_by_grpc(server, str(png_path))
    assert expected["in_distribution"], "the film's PNG must get a class for the comparison"

    page.set_input_files("#file-input", [str(ct_path), str(film_path)])
    wait_for_answers(page, 2)
    ct_card, film_card = card(page, 1), card(page, 0)  # newest first
    assert ct_card.get_attribute("data-state") == "error"
    assert ct_card.locator(".message").inner_text() == (
        "ct.dcm was not scored: modality CT is not a radiograph (CR, DX, DR)"
    )
    assert film_card.get_attribute("data-state") == "done"
    shown = film_card.locator(".probability-value")
    assert float(shown.get_attribute("data-probability")) == pytest.approx(float(expected["probability"]), abs=1e-6)
    assert film_card.locator(".class-name").inner_text() == expected["label"].decode()
    facts = film_card.locator(".dicom-facts")
    assert facts.get_attribute("data-view-position") == "PA" and "window (centre/width)" in facts.inner_text()
    film_card.locator(".heatmap[data-drawn]").wait_for(state="attached")
    assert film_card.locator(".xray").evaluate("image => image.naturalWidth") == film.Columns
    screenshot(page, "dicom")

    # in front of tensorflow_model_server without the route: its answer to a /v1/ path it does not know
    page.route(
        f"**{DICOM_PATH}",
        lambda route: route.fulfill(
            status=400,
            content_type="application/json",
            body=json.dumps({"error": f"Malformed request: POST {DICOM_PATH}"}),
        ),
    )
    page.set_input_files("#file-input", str(film_path))
    wait_for_answers(page, 3)
    assert "This server does not convert DICOM" in card(page).locator(".message").inner_text()


def test_files_over_the_size_cap_are_refused_in_the_page(page, site, shared_data):
    page.goto(f"http://127.0.0.1:{site['server'].rest_port}/?max_mb=0.001")
    xray = sorted(glob.glob(f"{shared_data}/chest_xray/test/NORMAL/*.jpeg"))[0]
    page.set_input_files("#file-input", xray)
    wait_for_answers(page, 1)
    assert "over the size cap" in card(page).locator(".message").inner_text()


def test_keyboard_only_at_phone_width(browser, site, shared_data):
    context = browser.new_context(viewport={"width": 375, "height": 740})
    narrow = context.new_page()
    # Listening from the start turns Chromium's file-chooser interception on before the key press; asked
    # for only inside expect_file_chooser, it can lose the race on a loaded machine and the chooser is missed.
    narrow.on("filechooser", lambda _: None)
    narrow.goto(f"http://127.0.0.1:{site['server'].rest_port}/")
    narrow.wait_for_selector("#server-status[data-state='ok']")
    narrow.focus("#model-name")  # the first control; Tab then walks the page in order
    for expected in ("target", "choose-files"):
        narrow.keyboard.press("Tab")
        assert narrow.evaluate("() => document.activeElement.id") == expected
    with narrow.expect_file_chooser() as chooser:
        narrow.keyboard.press("Enter")
    chooser.value.set_files(
        [ct_like_slice(site["files"]), sorted(glob.glob(f"{shared_data}/chest_xray/test/NORMAL/*.jpeg"))[0]]
    )
    wait_for_answers(narrow, 2)
    narrow.keyboard.press("Tab")  # on into the results: the newest card's heatmap method, then its slider
    narrow.keyboard.press("Tab")
    focused = narrow.evaluate("() => document.activeElement.className")
    assert focused in ("heatmap-method", "opacity")
    assert narrow.evaluate("() => document.documentElement.scrollWidth") <= 375, "the page scrolls sideways"
    screenshot(narrow, "phone")
    context.close()


def test_a_pushed_version_shows_up_without_a_reload(page, site, shared_data):
    server = site["server"]
    place_version(site["base"], 2, site["models"][1])
    page.locator("#target option", has_text="latest (version 2)").wait_for(state="attached", timeout=30000)
    assert "label stable (version 1)" in page.locator("#target").inner_text()
    xray = sorted(glob.glob(f"{shared_data}/chest_xray/test/NORMAL/*.jpeg"))[0]
    page.set_input_files("#file-input", xray)
    wait_for_answers(page, 1)
    expected = explained_by_grpc(server, xray)
    assert expected["version"] == 2
    assert card(page).locator(".provenance").get_attribute("data-version") == "2"
    shown = float(card(page).locator(".probability-value").get_attribute("data-probability"))
    assert shown == pytest.approx(float(expected["probability"]), abs=1e-6)
    screenshot(page, "new-version")

    page.select_option("#target", "label:stable")
    page.set_input_files("#file-input", xray)
    wait_for_answers(page, 2)
    assert "version 1, label stable" in card(page).locator(".provenance").inner_text()
    shown = float(card(page).locator(".probability-value").get_attribute("data-probability"))
    assert shown == pytest.approx(float(explained_by_grpc(server, xray, version=1)["probability"]), abs=1e-6)


def get(port: int, path: str):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    result = response.status, dict(response.getheaders()), response.read()
    connection.close()
    return result


def test_the_page_is_served_at_root_and_no_ui_turns_it_off(site):
    with_page = site["server"]
    without = start_server(config.model_config(MODEL_NAME, site["base"]), web_page=False)
    try:
        status, headers, body = get(with_page.rest_port, "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html") and b"decision support" in body.lower()
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert get(with_page.rest_port, "/app.js")[0] == 200
        status, _, body = get(with_page.rest_port, "/../serving/rest.py")
        assert status == 404 and "no such path" in json.loads(body)["error"]
        status, _, body = get(without.rest_port, "/")
        assert status == 404 and "no such path" in json.loads(body)["error"]
        assert get(without.rest_port, f"/v1/models/{MODEL_NAME}")[0] == 200
    finally:
        without.stop(grace_seconds=1)


def test_the_explain_signature_answers_over_rest_as_over_grpc(site, shared_data):
    server = site["server"]
    path = sorted(glob.glob(f"{shared_data}/chest_xray/test/PNEUMONIA/*.jpeg"))[0]
    expected = explained_by_grpc(server, path, version=1)
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=30)
    image = {"b64": base64.b64encode(open(path, "rb").read()).decode()}
    body = {"signature_name": "explain_images", "instances": [image]}
    connection.request("POST", f"/v1/models/{MODEL_NAME}/versions/1:predict", body=json.dumps(body))
    answer = json.loads(connection.getresponse().read())["predictions"][0]
    connection.close()
    for key in ("probability", "ood_score", "ood_threshold", "threshold"):
        assert answer[key] == pytest.approx(float(expected[key]), rel=1e-6), key
    assert answer["in_distribution"] == bool(expected["in_distribution"])
    np.testing.assert_allclose(answer["gradcam"], expected["gradcam"], atol=1e-6)
    np.testing.assert_allclose(answer["gradcam_plus_plus"], expected["gradcam_plus_plus"], atol=1e-6)
