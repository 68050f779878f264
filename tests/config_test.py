"""RunConfig: YAML settings overridden by flags; unknown settings are refused."""
import pytest

from pipeline.config import RunConfig


def test_yaml_then_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 7\nimage_size: 96\nmodel_config: {dense_units: 8}\n")
    config = RunConfig.load(str(path), epochs=2, root=str(tmp_path), architecture=None)
    assert (config.epochs, config.image_size, config.architecture) == (2, 96, "cnn")
    assert config.data == str(tmp_path / "data") and config.serving_dir == str(tmp_path / "serving")
    assert config.trainer_config()["model_config"] == {"dense_units": 8}


def test_unknown_setting_is_named(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epoch: 7\n")
    with pytest.raises(ValueError, match="unknown config setting.*epoch"):
        RunConfig.load(str(path))
