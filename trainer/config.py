"""The Trainer's settings, declared once: the fields of `TrainerConfig`.

A field carries a setting's type, default, one-line help, bounds, whether a custom_config must hold it and
whether `pneumonia run` has a flag for it. From the fields follow the checks (`from_dict`), the Trainer's
custom_config (`to_dict`), the flat YAML keys of `RunConfig` (pipeline/config.py) and the CLI flags
(`add_flags`, `overrides`): adding a setting is adding a field.

The CLI builds its flags from this module, so it imports no TensorFlow; the checks that need the model
registry import it when they run.
"""

import argparse
import dataclasses
from typing import Any, Dict, List, Optional, Sequence


def setting(
    default: Any,
    help: str,
    *,
    flag: bool = False,
    required: bool = False,
    at_least: Optional[float] = None,
    at_most: Optional[float] = None,
    positive: bool = False,
    choices: Optional[Sequence[str]] = None,
) -> Any:
    """A TrainerConfig field. `required`: a custom_config must hold it (the settings the Trainer had from the
    start; later ones are optional, so pipelines compiled before them still run). `flag`: `pneumonia run`
    (and `compile`) take --the-name. `choices` are the flag's; the code that uses the value checks it."""
    metadata = {
        "help": help,
        "flag": flag,
        "required": required,
        "at_least": at_least,
        "at_most": at_most,
        "positive": positive,
        "choices": choices,
    }
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _has_type(value: Any, expected: type) -> bool:
    """JSON's types: a bool is not a number, an int is also a float."""
    if isinstance(value, bool) and expected is not bool:
        return False
    return isinstance(value, (int, float) if expected is float else expected)


def _bound_broken(value: Any, metadata: Dict[str, Any]) -> Optional[str]:
    if metadata["at_least"] is not None and value < metadata["at_least"]:
        return f"must be at least {metadata['at_least']}"
    if metadata["at_most"] is not None and value > metadata["at_most"]:
        return f"must be at most {metadata['at_most']}"
    if metadata["positive"] and value <= 0:
        return "must be positive"
    return None


@dataclasses.dataclass(frozen=True)
class TrainerConfig:
    """Every setting of the Trainer (trainer/task.py run_fn), with its default.

    Constructing one checks types and bounds (no TensorFlow needed, so a RunConfig is checked as it loads);
    `from_dict` also refuses unknown and missing keys and runs `check`, which asks the model registry and the
    Trainer's own functions about the values.
    """

    architecture: str = setting("cnn", "model architecture (default cnn)", flag=True, required=True)
    model_config: dict = setting({}, "architecture settings: keyword arguments of its builder in trainer/models.py")
    image_size: int = setting(128, "square input size in pixels (default 128)", flag=True, required=True, at_least=1)
    epochs: int = setting(5, "training epochs (default 5)", flag=True, required=True, at_least=0)
    batch_size: int = setting(32, "batch size (default 32)", flag=True, required=True, at_least=1)
    learning_rate: float = setting(
        1e-3, "Adam's initial learning rate, decayed along a cosine in each stage", required=True, positive=True
    )
    early_stopping_patience: int = setting(
        3, "epochs without a better validation value before a stage stops", required=True, at_least=0
    )
    early_stopping_metric: str = setting(
        "auc", "what picks the best epoch on validation: auc, or loss once AUC saturates"
    )
    threshold_policy: str = setting(
        "youden",
        "how the operating threshold is chosen on validation: youden (default), sensitivity:X (e.g. "
        "sensitivity:0.98), cost:R (a missed pneumonia costs R false alarms), fixed:X or median-midpoint; "
        "the ThresholdCalibrator applies it again on a calibration split",
        flag=True,
        required=True,
    )
    loss: str = setting(
        "bce", "training loss (default bce with class weights)", flag=True, required=True, choices=("bce", "focal")
    )
    label_smoothing: float = setting(0.0, "targets pulled towards 0.5 by this much: graded, less saturated scores")
    augment: bool = setting(True, "training-only rotations, shifts, zoom, brightness, contrast", required=True)
    horizontal_flip: bool = setting(
        False, "training-only mirroring; off by default: it moves the heart to the wrong side", required=True
    )
    crop_min_area: float = setting(1.0, "< 1: training-only random-resized crop down to this share of the image")
    acquisition_augment: bool = setting(
        False, "training-only gamma, blur/sharpen, noise, JPEG re-encoding, wider exposure"
    )
    ema_epochs: float = setting(0.0, "> 0: exponential moving average of the weights over about this many epochs")
    cache: bool = setting(False, "cache decoded training images in memory", required=True)
    weights: str = setting(
        "none",
        "pretrained backbone weights: imagenet (needs internet), a local .h5/.keras file, or none (default)",
        flag=True,
        required=True,
    )
    seed: int = setting(42, "seed of the initial weights, the shuffling and the augmentation", required=True)
    ood_percentile: float = setting(
        99.5,
        "the OOD guard's threshold: this percentile of the validation images' "
        "distances, so that share of in-distribution images passes",
        positive=True,
        at_most=100,
    )
    distribution: str = setting(
        "none",
        "where the Trainer trains: none (one device), mirrored (the GPUs of one node) or multi_worker (the "
        "workers in TF_CONFIG, as a TFJob or Vertex AI sets it); batch_size is per replica, the learning rate "
        "scales linearly with the replicas",
        flag=True,
        choices=("none", "mirrored", "multi_worker"),
    )
    worker_timeout_seconds: float = setting(
        300.0, "multi_worker: how long each worker waits for the others in TF_CONFIG to answer", positive=True
    )

    def __post_init__(self) -> None:
        """Types, then bounds: the checks that need no TensorFlow."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not _has_type(value, field.type):
                raise ValueError(f"trainer setting {field.name}={value!r}: expected {field.type.__name__}")
        for field in dataclasses.fields(self):
            broken = _bound_broken(getattr(self, field.name), field.metadata)
            if broken:
                raise ValueError(f"trainer setting {field.name}={getattr(self, field.name)}: {broken}")

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainerConfig":
        """The settings of a custom_config, refused in one line if this Trainer would fail on them: unknown or
        missing keys, wrong types, values out of bounds or unknown to the code that uses them. run_fn reads its
        custom_config with it before training; `pneumonia compile` and `schedule` before compiling or uploading."""
        fields = {field.name: field for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown trainer setting(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
        missing = sorted(name for name, field in fields.items() if field.metadata["required"] and name not in values)
        if missing:
            raise ValueError(f"missing trainer setting(s) {', '.join(missing)}")
        config = cls(**values)
        config.check()
        return config

    def to_dict(self) -> Dict[str, Any]:
        """The Trainer's custom_config: plain JSON-able values, every setting."""
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Refuses values the Trainer would fail on, asking the code that uses them: the model registry (the
        architecture, its model_config, pretrained weights), the threshold policy parser, and the loss, early
        stopping, augmentation, weight averaging and distribution of the Trainer."""
        from trainer import augment, distribute, models, objective, threshold  # keeps TensorFlow out of CLI start-up

        if "weights" in self.model_config:
            raise ValueError("model_config must not set 'weights'; use the weights setting (--weights)")
        if self.weights != "none" and models.architecture(self.architecture).fine_tune_from is None:
            raise ValueError(
                f"architecture {self.architecture!r} has no pretrained backbone: weights must be "
                f"'none', got {self.weights!r}"
            )
        models.check_settings(self.architecture, self.model_config)
        threshold.parse(self.threshold_policy)
        objective.early_stopping_monitor(self.early_stopping_metric)
        objective.loss_and_class_weights(self.loss, 1, 1, self.label_smoothing)
        augment.check_settings(self.crop_min_area)
        objective.ema_momentum(self.ema_epochs, 1)
        distribute.check(self.distribution, self.architecture)

    @classmethod
    def add_flags(cls, parser: argparse.ArgumentParser) -> None:
        """A --flag per setting marked `flag`, default None: a flag not given leaves the YAML value or default."""
        for field in cls._flagged():
            parser.add_argument(
                "--" + field.name.replace("_", "-"), help=field.metadata["help"], default=None, **_parsing(field)
            )

    @classmethod
    def overrides(cls, args: argparse.Namespace) -> Dict[str, Any]:
        """The settings given as flags, for `RunConfig.load(path, **overrides)`."""
        given = {field.name: getattr(args, field.name) for field in cls._flagged()}
        return {name: value for name, value in given.items() if value is not None}

    @classmethod
    def _flagged(cls) -> List[dataclasses.Field]:
        return [field for field in dataclasses.fields(cls) if field.metadata["flag"]]


def _parsing(field: dataclasses.Field) -> Dict[str, Any]:
    """How argparse reads the flag: --name/--no-name for a bool (bool("false") would be True)."""
    if field.type is bool:
        return {"action": argparse.BooleanOptionalAction}
    return {"type": field.type, "choices": field.metadata["choices"]}
