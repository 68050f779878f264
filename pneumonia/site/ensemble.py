"""`pneumonia ensemble`: one model averaging the latest trained models of several architectures under a root.

The ensemble is the registry's `ensemble` architecture (trainer/models.py): the pipeline builds it from the
members' Keras weights, chooses its own threshold on validation, and evaluates, blesses and pushes it like
any other model. Members are picked by a rule fixed before any figure is seen: the latest evaluated model of
each architecture (blessed ones only, unless asked), never by test or external results.
"""

import dataclasses
from typing import Dict, List, Optional, Sequence

from pipeline.config import RunConfig
from serving.repository import serving_model_dir
from trainer.task import keras_weights_path

ENSEMBLE = "ensemble"


def ensemble_members(
    evaluated: Sequence, architectures: Optional[Sequence[str]] = None, include_unblessed: bool = False
) -> List[Dict]:
    """Member specs (architecture, image size, settings, Keras weights file) from `latest_evaluations`."""
    by_name = {item.architecture: item for item in evaluated if item.architecture != ENSEMBLE}
    wanted = list(architectures) if architectures else sorted(by_name)
    missing = [name for name in wanted if name not in by_name]
    if missing:
        raise ValueError(
            f"no evaluated model of {', '.join(missing)} under this root; evaluated: "
            f"{', '.join(sorted(by_name)) or 'none'}"
        )
    chosen = [by_name[name] for name in wanted if include_unblessed or by_name[name].blessed]
    if len(chosen) < 2:
        raise ValueError(
            f"an ensemble needs at least 2 members; blessed models of: "
            f"{', '.join(name for name in wanted if by_name[name].blessed) or 'none'} "
            "(--include-unblessed to use the others)"
        )
    return [
        {
            "architecture": item.architecture,
            "image_size": item.image_size,
            "model_config": item.model.get("model_config", {}),
            "weights": keras_weights_path(serving_model_dir(item.model_uri)),
        }
        for item in chosen
    ]


def ensemble_config(config: RunConfig, members: List[Dict]) -> RunConfig:
    """`config` turned into the ensemble's run: its architecture, members and input size, never warm-started."""
    image_size = max(member["image_size"] for member in members)  # each member resizes to its own
    config.trainer = dataclasses.replace(
        config.trainer, architecture=ENSEMBLE, model_config={"members": members}, image_size=image_size
    )
    config.warm_start = False
    return config
