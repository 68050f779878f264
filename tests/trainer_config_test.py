"""TrainerConfig: every Trainer setting declared once, as a field; its checks, custom_config, flags and YAML keys
follow from the fields; and the file it lives in is part of the Trainer's cache key."""

import argparse
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from tfx.components.util import udf_utils

from pipeline.config import RunConfig
from pipeline.pipeline import trainer_module_file
from pneumonia.cli import build_parser
from trainer.config import TrainerConfig, setting

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER_DIR = os.path.dirname(trainer_module_file())
RUN_FLAGS = [
    "--architecture",
    "--batch-size",
    "--distribution",
    "--epochs",
    "--image-size",
    "--loss",
    "--threshold-policy",
    "--weights",
]
REQUIRED = [
    "architecture",
    "augment",
    "batch_size",
    "cache",
    "early_stopping_patience",
    "epochs",
    "horizontal_flip",
    "image_size",
    "learning_rate",
    "loss",
    "seed",
    "threshold_policy",
    "weights",
]
LEFT_OUT = object()  # a refusal case's key missing from the custom_config


def test_a_custom_config_round_trips():
    custom_config = dict(
        TrainerConfig().to_dict(),
        model_config={"dense_units": 8},
        epochs=2,
        loss="focal",
        label_smoothing=0.1,
        ema_epochs=1.5,
        threshold_policy="sensitivity:0.98",
    )
    config = TrainerConfig.from_dict(custom_config)
    assert config.to_dict() == custom_config
    assert json.loads(json.dumps(config.to_dict())) == custom_config
    config.to_dict()["model_config"]["dense_units"] = 64  # a copy: the frozen config keeps its settings
    assert config.model_config == {"dense_units": 8}


def test_missing_optional_settings_take_their_defaults():
    """Settings added after the first ones are optional, so a custom_config compiled before them still runs."""
    defaults = TrainerConfig().to_dict()
    assert TrainerConfig.from_dict({key: defaults[key] for key in REQUIRED}) == TrainerConfig()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epoch": 3}, "unknown trainer setting(s) epoch; known: acquisition_augment, architecture, augment,"),
        ({"seed": LEFT_OUT}, "missing trainer setting(s) seed"),
        ({"epochs": "ten"}, "trainer setting epochs='ten': expected int"),
        ({"augment": 1}, "trainer setting augment=1: expected bool"),
        ({"learning_rate": True}, "trainer setting learning_rate=True: expected float"),
        ({"model_config": None}, "trainer setting model_config=None: expected dict"),
        ({"batch_size": 0}, "trainer setting batch_size=0: must be at least 1"),
        ({"learning_rate": 0.0}, "trainer setting learning_rate=0.0: must be positive"),
        ({"architecture": "resnet50"}, "unknown architecture 'resnet50'; choose one of: "),
        ({"model_config": {"depth": 3}}, "cnn: unknown model_config setting(s) depth; known: "),
        ({"weights": "imagenet"}, "architecture 'cnn' has no pretrained backbone: weights must be 'none'"),
        ({"model_config": {"weights": "imagenet"}}, "model_config must not set 'weights'; use the weights setting"),
        ({"threshold_policy": "f1"}, "unknown threshold policy 'f1'"),
        ({"early_stopping_metric": "f1"}, "unknown early_stopping_metric 'f1'; use one of: auc, loss"),
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
        ({"label_smoothing": 1.0}, "label_smoothing must be in [0, 1)"),
        ({"crop_min_area": 0.0}, "crop_min_area must be in (0, 1]"),
        ({"ema_epochs": -1.0}, "ema_epochs must be >= 0"),
        ({"ood_percentile": 0}, "trainer setting ood_percentile=0: must be positive"),
        ({"ood_percentile": 100.5}, "trainer setting ood_percentile=100.5: must be at most 100"),
    ],
)
def test_a_bad_custom_config_is_refused_in_one_line(change, message):
    custom_config = {
        key: value for key, value in {**TrainerConfig().to_dict(), **change}.items() if value is not LEFT_OUT
    }
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        TrainerConfig.from_dict(custom_config)
    assert "\n" not in str(error.value)


def test_every_setting_has_a_one_line_help():
    for field in dataclasses.fields(TrainerConfig):
        assert field.metadata["help"] and "\n" not in field.metadata["help"], field.name


def test_the_flags_follow_the_fields():
    parser = argparse.ArgumentParser()
    TrainerConfig.add_flags(parser)
    flags = {action.option_strings[0]: action for action in parser._actions if action.dest != "help"}
    assert sorted(flags) == RUN_FLAGS
    for field in dataclasses.fields(TrainerConfig):
        flag = flags.get("--" + field.name.replace("_", "-"))
        if flag:
            assert (flag.dest, flag.help, flag.default) == (field.name, field.metadata["help"], None)
    assert (flags["--epochs"].type, flags["--loss"].choices) == (int, ("bce", "focal"))
    assert TrainerConfig.overrides(parser.parse_args(["--epochs", "3", "--loss", "focal"])) == {
        "epochs": 3,
        "loss": "focal",
    }
    assert TrainerConfig.overrides(parser.parse_args([])) == {}  # the YAML file or the defaults apply
    with pytest.raises(SystemExit):
        parser.parse_args(["--loss", "hinge"])


@pytest.mark.parametrize("command", [["run"], ["compile", "--out", "p.yaml"]])
def test_run_and_compile_take_the_trainer_flags(command):
    args = build_parser().parse_args(command + ["--architecture", "swin", "--image-size", "64", "--weights", "none"])
    assert TrainerConfig.overrides(args) == {"architecture": "swin", "image_size": 64, "weights": "none"}


def test_the_module_imports_no_tensorflow():
    """The CLI builds its flags from it: importing it must not cost TensorFlow's seconds."""
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, trainer.config; print('\\n'.join(sys.modules))"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert not {"tensorflow", "keras", "numpy"} & set(loaded)


def test_adding_a_field_is_all_it_takes(tmp_path, monkeypatch):
    """A new field is a flag, a YAML key and a custom_config key, checked, and optional in an older custom_config:
    nothing else lists the settings. Fails if any of them is listed by hand again."""
    extended = dataclasses.make_dataclass(
        "ExtendedTrainerConfig",
        [
            ("warmup_epochs", int, setting(0, "epochs of linear learning-rate warm-up", flag=True, at_least=0)),
            ("mixup", bool, setting(False, "mix pairs of training images", flag=True)),
        ],
        bases=(TrainerConfig,),
        frozen=True,
    )
    monkeypatch.setattr("pipeline.config.TrainerConfig", extended)  # as if the fields were in trainer/config.py
    parser = argparse.ArgumentParser()
    extended.add_flags(parser)
    flags = extended.overrides(parser.parse_args(["--warmup-epochs", "2", "--mixup"]))
    assert flags == {"warmup_epochs": 2, "mixup": True}

    path = tmp_path / "run.yaml"
    path.write_text("warmup_epochs: 1\nepochs: 4\n")
    assert RunConfig.load(str(path)).trainer.warmup_epochs == 1
    config = RunConfig.load(str(path), **flags)
    custom_config = config.trainer_config()
    assert (custom_config["warmup_epochs"], custom_config["mixup"], custom_config["epochs"]) == (2, True, 4)
    assert extended.from_dict(custom_config) == config.trainer
    assert extended.from_dict(TrainerConfig().to_dict()).warmup_epochs == 0  # compiled before the field existed
    with pytest.raises(ValueError, match="^trainer setting warmup_epochs=-1: must be at least 0$"):
        extended.from_dict(dict(custom_config, warmup_epochs=-1))


def user_module_path(trainer_dir: str, pipeline_root: str) -> str:
    """The Trainer's module_path execution property for this copy of trainer/, as TFX sets it (`task@<wheel>`)."""
    return udf_utils.package_user_module_file("Trainer", os.path.join(trainer_dir, "task.py"), pipeline_root)[1]


def test_editing_any_file_of_the_trainer_changes_its_cache_key(tmp_path):
    """TFX wheels every .py beside the module file and versions the wheel by a hash of their contents; the wheel's
    path is the Trainer's module_path execution property, which its cache key covers. So an edit to config.py,
    not the module file, still retrains, and trainer/ stays flat: a sub-package would not be in the wheel."""
    copies = {
        name: shutil.copytree(TRAINER_DIR, tmp_path / name / "trainer", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("checkout", "same", "edited")
    }
    with open(copies["edited"] / "config.py", "a", encoding="utf-8") as f:
        f.write("# an edit outside the module file\n")
    pipeline_root = str(tmp_path / "pipeline_root")
    keys = {name: user_module_path(str(path), pipeline_root) for name, path in copies.items()}
    assert keys["same"] == keys["checkout"] != keys["edited"]

    with zipfile.ZipFile(keys["checkout"].split("@", 1)[1]) as wheel:
        wheeled = {name for name in wheel.namelist() if name.endswith(".py")}
    sources = {
        os.path.relpath(os.path.join(folder, name), TRAINER_DIR)
        for folder, _, names in os.walk(TRAINER_DIR)
        for name in names
        if name.endswith(".py")
    }
    assert "config.py" in wheeled and wheeled == sources - {"__init__.py"}
