"""The latest served model as an Evaluator baseline, for orchestrators without TFX's resolver.

Open-source Kubeflow Pipelines cannot run the `resolver` executors TFX compiles a
LatestBlessedModelStrategy Resolver into (kubeflow/pipelines backend/src/v2/compiler/argocompiler/
dag.go: "resolver executors not implemented"). The Pusher writes every blessed model to the serving
directory unless the latest version already holds the same bytes, so the newest servable version there
(serving/repository.py, the server's own rule) is the latest blessed model, and it is what is actually
serving. This copies it into the output Model artifact (artifacts stay immutable when versions are deleted
later), or marks the artifact as holding none on a first run; the Evaluator executor below then evaluates
without a baseline.
"""

import os
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.components.evaluator import executor as tfx_evaluator
from tfx.types import standard_component_specs
from tfx.utils import io_utils

from serving.repository import servable_versions, serving_model_dir

SERVED_VERSION_PROPERTY = "served_version"  # the version copied; 0 when nothing is served yet
SERVED_FROM_PROPERTY = "served_from"


def resolve_latest_served(model_base: str, model: types.Artifact) -> None:
    """Copies <model_base>/<latest servable version>/ into `model` where the Trainer writes its SavedModel."""
    versions = servable_versions(model_base)
    if not versions:
        logging.info("No version served in %s yet: the Evaluator will run without a baseline.", model_base)
        model.set_int_custom_property(SERVED_VERSION_PROPERTY, 0)
        return
    source = os.path.join(model_base, str(versions[-1]))
    io_utils.copy_dir(source, serving_model_dir(model.uri))
    model.set_int_custom_property(SERVED_VERSION_PROPERTY, versions[-1])
    model.set_string_custom_property(SERVED_FROM_PROPERTY, source)
    logging.info("Baseline: version %d from %s.", versions[-1], source)


def holds_no_model(model: types.Artifact) -> bool:
    return model.has_custom_property(SERVED_VERSION_PROPERTY) and not model.get_custom_property(SERVED_VERSION_PROPERTY)


class Evaluator(tfx_evaluator.Executor):
    """TFX's Evaluator, given no baseline when the latest-served resolution found nothing served."""

    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        key = standard_component_specs.BASELINE_MODEL_KEY
        baselines = [model for model in input_dict.get(key, []) if not holds_no_model(model)]
        super().Do({**input_dict, key: baselines}, output_dict, exec_properties)
