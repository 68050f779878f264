"""The full-data recipes in pipeline/configs: one per architecture, valid, and reproducible from RESULTS.md."""

import glob
import os

import pytest

from pipeline.config import RunConfig
from pneumonia.analysis import generated
from trainer import models, task

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = sorted(glob.glob(os.path.join(ROOT, "pipeline", "configs", "*.yaml")))
ABLATIONS = sorted(glob.glob(os.path.join(ROOT, "pipeline", "configs", "ablations", "*.yaml")))
LUNGS = sorted(glob.glob(os.path.join(ROOT, "pipeline", "configs", "lungs", "*.yaml")))  # issue 12's recipes


def test_every_architecture_has_a_recipe_named_after_it():
    """All but the ensemble, which `pneumonia ensemble` builds from trained members instead of a recipe."""
    trained = sorted(set(models.REGISTRY) - {"ensemble"})
    assert sorted(os.path.basename(path)[: -len(".yaml")] for path in RECIPES) == trained


@pytest.mark.parametrize("path", RECIPES + ABLATIONS + LUNGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_recipe_loads_and_builds_its_model(path):
    config = RunConfig.load(path)
    if path in RECIPES + LUNGS:
        assert config.trainer.architecture == os.path.basename(path)[: -len(".yaml")]
    config.trainer.check()
    model = task.build_model(config.trainer)
    assert model.input_shape == (None, config.trainer.image_size, config.trainer.image_size, 1)


def test_results_document_reproduces_every_recipe():
    with open(os.path.join(ROOT, "docs", "RESULTS.md"), encoding="utf-8") as f:
        text = f.read()
    for path in RECIPES + ABLATIONS + LUNGS:
        assert f"--config {os.path.relpath(path, ROOT)}" in text
    for section in ("", "ablation", "errors"):
        begin, end = generated.generated_markers(section)
        assert text.index(begin) < text.index(end)


def test_each_ablation_row_of_issue_12_adds_one_remedy_to_the_cnn_recipe():
    """Rows differ from the previous one in exactly the remedy they name; row 3 is the recipe, row 4 adds the
    in-model view standardisation to it."""
    rows = [
        os.path.join(ROOT, "pipeline", "configs", *parts)
        for parts in (
            ("cnn.yaml",),
            ("ablations", "cnn_crop.yaml"),
            ("ablations", "cnn_crop_acquisition.yaml"),
            ("lungs", "cnn.yaml"),
            ("ablations", "cnn_lungs_view.yaml"),
        )
    ]
    configs = [RunConfig.load(path).trainer_config() for path in rows]
    added = [{key for key in after if after[key] != before[key]} for before, after in zip(configs, configs[1:])]
    assert added == [{"crop_min_area"}, {"acquisition_augment"}, {"ema_epochs"}, {"model_config"}]
    assert configs[-1]["model_config"] == {"central_crop": 0.875, "intensity": "percentile"}
