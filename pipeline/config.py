"""The one run configuration: YAML file, overridden by CLI flags, handed to create_pipeline.

Everything a run needs travels in `RunConfig`. The Trainer's settings are its `trainer`, a
`trainer.config.TrainerConfig` whose keys stay top-level in the YAML file; the Trainer receives them as
`trainer_config()` through `custom_config` (the trainer package never imports this module).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional

import yaml

from components.metrics_vocabulary import DEFAULT_INTERVALS
from trainer.config import TrainerConfig

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
    # Trainer: its settings (trainer/config.py) are top-level keys of the YAML file and of load's overrides
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    warm_start: bool = False  # start from the latest trained model (same architecture only)
    # Evaluator: blessing on the validation split
    min_auc: float = 0.80
    max_auc_drop: float = 0.01
    # The Evaluator's 95% intervals: "analytic" (closed form, about the cost of one more metric), TFMA's
    # "bootstrap" (Poisson, 20 replicates) or "jackknife" (20 buckets), or "none" (pipeline/evaluation.py)
    confidence_intervals: str = DEFAULT_INTERVALS
    # Site gate: bounds at the served threshold on the calibration split (none by default)
    site_min_sensitivity: Optional[float] = None
    site_min_specificity: Optional[float] = None
    gate_on_lower_bound: bool = False  # judge the lower 95% confidence bound, not the point estimate
    # Non-inferiority: no push unless the paired-bootstrap lower 95% bound of (new AUC - baseline AUC) on the
    # pediatric test split is at least -margin (none by default; pipeline/non_inferiority.py)
    non_inferiority_margin: Optional[float] = None
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
        from pipeline.evaluation import SiteGate  # keeps TensorFlow out of CLI start-up

        if self.site_min_sensitivity is None and self.site_min_specificity is None:
            if self.gate_on_lower_bound:
                raise ValueError("--gate-on-lower-bound needs --site-min-sensitivity or --site-min-specificity")
            return None
        return SiteGate(
            CALIBRATION_SPLIT, self.site_min_sensitivity, self.site_min_specificity, self.gate_on_lower_bound
        )

    def trainer_config(self) -> Dict[str, Any]:
        """The Trainer's `custom_config`: plain JSON-able values only."""
        return self.trainer.to_dict()

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
        trainer_keys = {f.name for f in dataclasses.fields(TrainerConfig)}
        known = {f.name for f in dataclasses.fields(cls)} - {"trainer"} | trainer_keys
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        trainer = TrainerConfig(**{k: v for k, v in values.items() if k in trainer_keys})
        return cls(trainer=trainer, **{k: v for k, v in values.items() if k not in trainer_keys})
