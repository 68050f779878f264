"""Factory for TFX's Pusher running the atomic, de-duplicating executor."""

import os

from tfx import v1 as tfx
from tfx.dsl.components.base import executor_spec
from tfx.types import Channel

from components.pusher.executor import Executor


def create_pusher(model: Channel, model_blessing: Channel, serving_dir: str, model_name: str) -> tfx.components.Pusher:
    """Pushes blessed models to `<serving_dir>/<model_name>/<version>/`."""
    return tfx.components.Pusher(
        model=model,
        model_blessing=model_blessing,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=os.path.join(serving_dir, model_name))
        ),
        custom_executor_spec=executor_spec.ExecutorClassSpec(Executor),
    )
