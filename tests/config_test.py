"""RunConfig: YAML settings overridden by flags; unknown settings are refused; the Trainer's settings are one
TrainerConfig, flat in the YAML file and the overrides."""

import pytest

from pipeline.config import RunConfig
from trainer.config import TrainerConfig


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\nimage_size: 96\nmodel_config: {dense_units: 8}\n")
    config = RunConfig.load(str(path), epochs=2, root=str(tmp_path), architecture=None)
    assert (config.trainer.epochs, config.trainer.image_size, config.trainer.architecture) == (2, 96, "cnn")
    assert config.data == str(tmp_path / "data") and config.serving_dir == str(tmp_path / "serving")
    assert config.trainer_config()["model_config"] == {"dense_units": 8}


def test_unknown_setting_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epoch: 7\n")
    with pytest.raises(ValueError, match="unknown config setting.*epoch"):
        RunConfig.load(str(path))


def test_the_trainer_settings_are_one_trainer_config(tmp_path):
    """Flat trainer keys land in `trainer`, the rest on the RunConfig; custom_config is the trainer's dict."""
    path = tmp_path / "run.yaml"
    path.write_text("architecture: swin\nloss: focal\nmin_auc: 0.9\n")
    config = RunConfig.load(str(path), batch_size=8, runner="beam")
    assert config.trainer == TrainerConfig(architecture="swin", loss="focal", batch_size=8)
    assert (config.min_auc, config.runner) == (0.9, "beam")
    assert config.trainer_config() == config.trainer.to_dict()
    assert RunConfig().trainer == TrainerConfig()


def test_the_yaml_file_stays_flat(tmp_path):
    """`trainer:` is not a key: its settings are; the refusal lists them among the known ones."""
    path = tmp_path / "run.yaml"
    path.write_text("trainer: {epochs: 2}\n")
    with pytest.raises(ValueError, match="unknown config setting.*: trainer; known: .*architecture.*epochs") as error:
        RunConfig.load(str(path))
    assert "trainer," not in str(error.value).split("known: ")[1]


def test_a_bad_trainer_value_is_refused_as_the_file_loads(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: ten\n")
    with pytest.raises(ValueError, match="^trainer setting epochs='ten': expected int$"):
        RunConfig.load(str(path))
