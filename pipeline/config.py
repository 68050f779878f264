"""The one run configuration: YAML file, overridden by CLI flags, handed to create_pipeline.

Everything a run needs travels in `RunConfig`; the Trainer receives `trainer_config()` through
`custom_config` (the trainer package never imports this module).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional

import yaml

DEFAULT_MODEL_NAME = "pneumonia"
DEFAULT_SPLITS = ("train", "eval", "test", "external")
# Splits the Evaluator reports on; `eval` alone decides the blessing.
BLESSING_SPLIT = "eval"
# The site's labelled sample (pneumonia prepare): where the ThresholdCalibrator sets the served threshold.
CALIBRATION_SPLIT = "calibration"


def absolute_uri(path: str) -> str:
    """A local path made absolute; a URI (gs://bucket/...) as given, for the readers and writers that go
    through tf.io.gfile."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


@dataclasses.dataclass
class RunConfig:
    """Every setting of one pipeline run."""

    root: str = os.path.join(os.path.expanduser("~"), "pneumonia-runs")
    data: str = ""  # prepared TFRecords folder (one sub-folder per split); default <root>/data
    serving_dir: str = ""  # TF Serving base path; default <root>/serving
    pipeline_name: str = "pneumonia"
    model_name: str = DEFAULT_MODEL_NAME
    splits: List[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_SPLITS))
    # Trainer
    architecture: str = "cnn"
    model_config: Dict[str, Any] = dataclasses.field(default_factory=dict)  # architecture settings
    image_size: int = 128
    epochs: int = 5
    batch_size: int = 32
    learning_rate: float = 1e-3
    early_stopping_patience: int = 3
    early_stopping_metric: str = "auc"  # or "loss": what picks the best epoch on validation
    threshold_policy: str = "youden"  # or "sensitivity:0.95", "fixed:0.5", "median-midpoint"
    loss: str = "bce"  # or "focal"
    label_smoothing: float = 0.0  # targets pulled towards 0.5 by this much: graded, less saturated scores
    augment: bool = True  # training-only rotations, shifts, zoom, brightness, contrast
    horizontal_flip: bool = False  # off by default: it moves the heart to the wrong side
    crop_min_area: float = 1.0  # < 1: training-only random-resized crop down to this share of the image
    acquisition_augment: bool = False  # training-only gamma, blur/sharpen, noise, JPEG re-encoding, wider exposure
    ema_epochs: float = 0.0  # > 0: exponential moving average of the weights over about this many epochs
    cache: bool = False  # cache decoded training images in memory
    weights: str = "none"  # pretrained backbone weights: "imagenet", a local .h5/.keras file, or "none"
    warm_start: bool = False  # start from the latest trained model (same architecture only)
    seed: int = 42
    # Evaluator: blessing on the validation split
    min_auc: float = 0.80
    max_auc_drop: float = 0.01
    # TFMA's 95% intervals on every metric: "bootstrap" (Poisson, 20 replicates), "jackknife" (20 buckets: a
    # fraction of the bootstrap's Evaluator time) or "none"
    confidence_intervals: str = "bootstrap"
    # Site gate: bounds at the served threshold on the calibration split (none by default)
    site_min_sensitivity: Optional[float] = None
    site_min_specificity: Optional[float] = None
    gate_on_lower_bound: bool = False  # judge the lower 95% confidence bound, not the point estimate
    # Orchestration
    runner: str = "local"
    beam_args: List[str] = dataclasses.field(default_factory=list)
    # Kubeflow: the Trainer pod's requests (= limits); 0 leaves the cluster's default
    trainer_cpu: float = 0.0
    trainer_memory_gb: float = 0.0
    trainer_gpus: int = 0
    trainer_gpu_type: str = "nvidia.com/gpu"  # the Kubernetes resource name of the accelerator

    def __post_init__(self) -> None:
        self.root = os.path.abspath(os.path.expanduser(self.root))
        self.data = absolute_uri(self.data) if self.data else os.path.join(self.root, "data")
        self.serving_dir = absolute_uri(self.serving_dir) if self.serving_dir else os.path.join(self.root, "serving")

    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.root, "tfx", self.pipeline_name)

    @property
    def metadata_path(self) -> str:
        return os.path.join(self.root, "metadata.sqlite")

    def site_gate(self):
        """The Evaluator's site gate, or None when no bound is set."""
        from pipeline.evaluation import SiteGate

        if self.site_min_sensitivity is None and self.site_min_specificity is None:
            if self.gate_on_lower_bound:
                raise ValueError("--gate-on-lower-bound needs --site-min-sensitivity or --site-min-specificity")
            return None
        return SiteGate(CALIBRATION_SPLIT, self.site_min_sensitivity, self.site_min_specificity,
                        self.gate_on_lower_bound)

    def trainer_config(self) -> Dict[str, Any]:
        """The Trainer's `custom_config`: plain JSON-able values only."""
        return {
            "architecture": self.architecture,
            "model_config": self.model_config,
            "image_size": self.image_size,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "early_stopping_patience": self.early_stopping_patience,
            "early_stopping_metric": self.early_stopping_metric,
            "threshold_policy": self.threshold_policy,
            "loss": self.loss,
            "label_smoothing": self.label_smoothing,
            "augment": self.augment,
            "horizontal_flip": self.horizontal_flip,
            "crop_min_area": self.crop_min_area,
            "acquisition_augment": self.acquisition_augment,
            "ema_epochs": self.ema_epochs,
            "cache": self.cache,
            "weights": self.weights,
            "seed": self.seed,
        }

    @classmethod
    def load(cls, path: Optional[str] = None, **overrides: Any) -> "RunConfig":
        """Reads a YAML file (if given), then applies non-None overrides (CLI flags)."""
        values: Dict[str, Any] = {}
        if path:
            with open(path, encoding="utf-8") as f:
                values = yaml.safe_load(f) or {}
            if not isinstance(values, dict):
                raise ValueError(f"config {path}: expected a mapping of settings, got {type(values).__name__}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)
