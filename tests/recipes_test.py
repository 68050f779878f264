"""The full-data recipes in pipeline/configs: one per architecture, valid, and reproducible from RESULTS.md."""
import glob
import os

import pytest

from pipeline.config import RunConfig
from pneumonia import report
from trainer import models, task, threshold

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "pipeline", "configs", "*.yaml")))
ABLATIONS = sorted(glob.glob(os.path.join(ROOT, "pipeline", "configs", "ablations", "*.yaml")))


def test_every_architecture_has_a_recipe_named_after_it():
    assert sorted(os.path.basename(path)[:-len(".yaml")] for path in RECIPES) == sorted(models.REGISTRY)


@pytest.mark.parametrize("path", RECIPES + ABLATIONS, ids=os.path.basename)
def test_recipe_loads_and_builds_its_model(path):
    config = RunConfig.load(path)
    if path in RECIPES:
        assert config.architecture == os.path.basename(path)[:-len(".yaml")]
    trainer_config = config.trainer_config()
    threshold.parse(trainer_config["threshold_policy"])
    task.early_stopping_monitor(trainer_config["early_stopping_metric"])
    model = task.build_model(trainer_config)
    assert model.input_shape == (None, config.image_size, config.image_size, 1)


def test_results_document_reproduces_every_recipe():
    with open(os.path.join(ROOT, "docs", "RESULTS.md"), encoding="utf-8") as f:
        text = f.read()
    for path in RECIPES + ABLATIONS:
        assert f"--config {os.path.relpath(path, ROOT)}" in text
    for section in ("", "ablation", "errors"):
        begin, end = report.generated_markers(section)
        assert text.index(begin) < text.index(end)
