"""LatestServedModel: the newest version in the serving directory as a Model artifact (see executor.py)."""

from tfx.dsl.component.experimental.annotations import OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Model

from components.served_baseline import executor


@component
def LatestServedModel(  # noqa: N802 (TFX component name)
    model: OutputArtifact[Model],
    model_base: Parameter[str],
):
    """`model_base`: <serving_dir>/<model_name>, where the Pusher writes numbered versions."""
    executor.resolve_latest_served(model_base, model)
