"""Pusher executor: TF Serving layout, atomic versions, warm-up requests, no re-push of a served model.

TFX's own Pusher copies file by file into the version folder (a server polling the base path can see
a half-written version) and pushes a cached Trainer's model again as a new version. This executor
keeps the Pusher's interface and artifacts, but publishes the version atomically (serving/repository.py,
the rules the server reads it by), and skips the push when the newest servable version holds the same
model bytes. Each version carries warm-up requests for every signature (components/pusher/warmup.py).
"""

import os
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from components.pusher.warmup import write_warmup_requests
from serving.repository import latest_fingerprint, model_fingerprint, push_atomically


class Executor(tfx_pusher.Executor):
    def Do(
        self,
        input_dict: Dict[str, List[types.Artifact]],
        output_dict: Dict[str, List[types.Artifact]],
        exec_properties: Dict[str, Any],
    ) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem":
            raise ValueError("this Pusher supports a filesystem destination only")
        model_base = destination.filesystem.base_directory
        model_dir = self.GetModelPath(input_dict)
        fingerprint = model_fingerprint(model_dir)
        if latest_fingerprint(model_base) == fingerprint:
            logging.info("The latest version in %s already holds this model; not pushing it again.", model_base)
            model_push.set_string_custom_property("skipped", "already the latest served version")
            self._MarkNotPushed(model_push)
            return
        version = push_atomically(
            model_dir,
            model_base,
            fingerprint,
            model_dir,
            add_files=lambda version_dir: write_warmup_requests(model_dir, version_dir),
        )
        io_utils.copy_dir(model_dir, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=os.path.join(model_base, version), pushed_version=version)
        logging.info("Model pushed as version %s in %s.", version, model_base)
