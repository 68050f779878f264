"""`pneumonia calibrate` against a running `pneumonia serve`: the new version is picked up, the label routes to
it, predictions carry the new threshold; unlabelled prevalence (EM) and prior adjustment; bad input refused
with nothing written."""

import glob
import json
import os
import re
import shutil
import time

import numpy as np
import pytest
import tensorflow as tf

from components.threshold_calibrator import prevalence
from components.threshold_calibrator.executor import SAVED_MODEL_RECORD
from pneumonia import cli
from serving import config
from tests.serving_fixtures import (
    MODEL_NAME,
    exported_models,
    image_request,
    model_base,  # noqa: F401 (fixtures)
    start_server,
    stub,
)


def copy_images(files, folder):
    os.makedirs(folder)
    for name in files:
        shutil.copyfile(name, os.path.join(folder, os.path.basename(name)))


@pytest.fixture(scope="module")
def site_images(shared_data):
    return {
        label: sorted(glob.glob(f"{shared_data}/chest_xray/test/{label}/*.jpeg"))[:24]
        for label in ("NORMAL", "PNEUMONIA")
    }


@pytest.fixture
def site(site_images, tmp_path):
    folder = str(tmp_path / "site")
    for label, files in site_images.items():
        copy_images(files[:12], os.path.join(folder, label))
    return folder


@pytest.fixture
def deployment(model_base, tmp_path):
    """Version 1 under <serving>/pneumonia, a model config file the server re-reads, and the server."""
    config_file = str(tmp_path / "models.config")
    config.write(config.model_config(MODEL_NAME, model_base), config_file)
    server = start_server(config.read(config_file), config_file=config_file, config_poll_seconds=0.1)
    yield os.path.dirname(model_base), config_file, server
    server.stop(grace_seconds=1)


def predict(server, images, label=""):
    request = image_request(images)
    if label:
        request.model_spec.version_label = label
    response = stub(server).Predict(request, timeout=30)
    return response.model_spec.version.value, tf.make_ndarray(response.outputs["threshold"])


def wait_for(condition, seconds=20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # the label is not known to the server yet
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not pick the change up")


def versions(serving_dir):
    return sorted(os.listdir(os.path.join(serving_dir, MODEL_NAME)))


def test_labelled_calibration_is_served_under_its_label(deployment, site, site_images, capsys):
    serving_dir, config_file, server = deployment
    cli.main(
        [
            "calibrate",
            "--serving-dir",
            serving_dir,
            "--site",
            site,
            "--policy",
            "sensitivity:0.9",
            "--label",
            "site-a",
            "--model-config-file",
            config_file,
        ]
    )
    printed = capsys.readouterr().out
    assert "12 NORMAL, 12 PNEUMONIA images; policy sensitivity:0.9" in printed
    assert "before (version 1): threshold 0.5000: sensitivity" in printed and "after:  threshold" in printed
    new_version = int(versions(serving_dir)[-1])
    with open(os.path.join(serving_dir, MODEL_NAME, str(new_version), SAVED_MODEL_RECORD)) as f:
        record = json.load(f)
    assert record["after"]["sensitivity"] >= 0.9 and record["source_version"] == 1
    assert f"version label site-a -> {new_version}" in printed
    assert config.read(config_file).model_config_list.config[0].version_labels["site-a"] == new_version

    images = [open(f, "rb").read() for f in site_images["NORMAL"][12:14]]
    wait_for(lambda: predict(server, images, "site-a")[0] == new_version)
    version, thresholds = predict(server, images, "site-a")
    np.testing.assert_allclose(thresholds, record["new_threshold"], rtol=1e-6)
    assert predict(server, images)[0] == new_version  # and it is the latest


def test_unlabelled_site_gets_a_prevalence_a_shift_test_and_a_prior_adjusted_version(
    deployment, site_images, tmp_path, capsys
):
    serving_dir, _, server = deployment
    unlabeled = str(tmp_path / "unlabeled")
    copy_images(site_images["PNEUMONIA"][:20] + site_images["NORMAL"][:5], unlabeled)
    reference = str(tmp_path / "data" / "eval")
    os.makedirs(reference)
    with tf.io.TFRecordWriter(os.path.join(reference, "data-00000-of-00001.tfrecord.gz"), "GZIP") as writer:
        for name in site_images["NORMAL"][12:] + site_images["PNEUMONIA"][12:]:
            image = tf.train.Feature(bytes_list=tf.train.BytesList(value=[open(name, "rb").read()]))
            writer.write(tf.train.Example(features=tf.train.Features(feature={"image": image})).SerializeToString())

    cli.main(
        ["calibrate", "--serving-dir", serving_dir, "--unlabeled", unlabeled, "--reference", os.path.dirname(reference)]
    )
    printed = capsys.readouterr().out
    assert "25 unlabelled images" in printed and "estimated pneumonia prevalence" in printed
    assert "Kolmogorov-Smirnov D = " in printed and "score shift vs validation (24 images)" in printed
    assert "threshold unchanged" in printed and versions(serving_dir) == ["1"]

    cli.main(
        [
            "calibrate",
            "--serving-dir",
            serving_dir,
            "--unlabeled",
            unlabeled,
            "--reference",
            os.path.dirname(reference),
            "--adjust-prior",
        ]
    )
    new_version = int(versions(serving_dir)[-1])
    with open(os.path.join(serving_dir, MODEL_NAME, str(new_version), SAVED_MODEL_RECORD)) as f:
        record = json.load(f)
    assert record["new_threshold"] == pytest.approx(prevalence.prior_adjusted_threshold(0.5, 0.5, record["prevalence"]))
    wait_for(lambda: predict(server, [open(site_images["NORMAL"][0], "rb").read()])[0] == new_version)
    np.testing.assert_allclose(
        predict(server, [open(site_images["NORMAL"][0], "rb").read()])[1], record["new_threshold"], rtol=1e-6
    )


def test_em_recovers_a_shifted_prevalence_and_the_prior_moves_the_threshold():
    rng = np.random.default_rng(0)
    labels = rng.random(4000) < 0.2
    evidence = rng.normal(np.where(labels, 1.0, -1.0), 1.0)
    posteriors = 1 / (1 + np.exp(-2 * evidence))  # exact posteriors for equal priors (0.5)
    estimate, _ = prevalence.em_prevalence(posteriors, 0.5)
    assert abs(estimate - 0.2) < 0.03 and abs(posteriors.mean() - 0.2) > 0.05  # better than the mean score
    assert prevalence.prior_adjusted_threshold(0.5, 0.5, 0.5) == pytest.approx(0.5)
    assert prevalence.prior_adjusted_threshold(0.5, 0.5, 0.2) > 0.5  # rarer disease: a higher bar


@pytest.mark.parametrize(
    "layout, extra, message",
    [
        ({"NORMAL": 12}, [], "has NORMAL images only"),
        ({"NORMAL": 12, "PNEUMONIA": 9}, [], "has 12 NORMAL and 9 PNEUMONIA images: at least 10 of each"),
        (
            {"NORMAL": 12, "PNEUMONIA": 12},
            [("PNEUMONIA/broken.jpeg", b"not a jpeg"), ("notes.txt", b"x")],
            r"2 unusable file\(s\) in .*: notes.txt \(not in NORMAL/ or PNEUMONIA/\); "
            r"PNEUMONIA/broken.jpeg \(not a JPEG",
        ),
        ({"NORMAL": 12, "PNEUMONIA": 12}, [], "version 7 does not exist under .*; versions: 1"),
    ],
)
def test_bad_input_is_one_line_and_leaves_nothing_written(
    deployment, site_images, tmp_path, capsys, layout, extra, message
):
    serving_dir, config_file, _ = deployment
    folder = str(tmp_path / "bad")
    for label, count in layout.items():
        copy_images(site_images[label][:count], os.path.join(folder, label))
    for name, content in extra:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(content)
    before = open(config_file).read()
    arguments = [
        "calibrate",
        "--serving-dir",
        serving_dir,
        "--site",
        folder,
        "--label",
        "site-b",
        "--model-config-file",
        config_file,
    ]
    if "version 7" in message:
        arguments += ["--version", "7"]
    with pytest.raises(SystemExit) as error:
        cli.main(arguments)
    assert str(error.value).startswith("error: ") and "\n" not in str(error.value)
    assert re.search(message, str(error.value)), str(error.value)
    assert os.listdir(os.path.join(serving_dir, MODEL_NAME)) == ["1"]  # no staging folder left either
    assert open(config_file).read() == before
