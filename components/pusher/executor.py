"""Pusher executor: TF Serving layout, atomic versions, warm-up requests, no re-push of a served model.

TFX's own Pusher copies file by file into the version folder (a server polling the base path can see
a half-written version) and pushes a cached Trainer's model again as a new version. This executor
keeps the Pusher's interface and artifacts, but writes the version to a hidden folder beside it and
renames it into place, and skips the push when the latest version holds the same model bytes. Each
version carries warm-up requests for every signature (components/pusher/warmup.py).
"""
import hashlib
import json
import os
import time
from typing import Any, Callable, Dict, List, Optional

from absl import logging
from tfx import types
from tfx.dsl.io import fileio
from tfx.components.pusher import executor as tfx_pusher
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from components.pusher.warmup import write_warmup_requests

PUSH_RECORD = os.path.join("assets.extra", "push.json")  # TF Serving ignores assets.extra/


def model_fingerprint(model_dir: str) -> str:
    """sha256 over the SavedModel's files (names and bytes), independent of where it lies."""
    digest = hashlib.sha256()
    for dirpath, _, filenames in sorted(fileio.walk(model_dir)):
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            digest.update(os.path.relpath(path, model_dir).encode() + b"\0")
            with fileio.open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def served_versions(model_base: str) -> List[int]:
    """Numeric version folders, ascending (what TF Serving would consider)."""
    if not fileio.isdir(model_base):
        return []
    names = [name.rstrip("/") for name in fileio.listdir(model_base)]
    return sorted(int(name) for name in names if name.isdigit() and fileio.isdir(os.path.join(model_base, name)))


def latest_fingerprint(model_base: str) -> Optional[str]:
    versions = served_versions(model_base)
    if not versions:
        return None
    record = os.path.join(model_base, str(versions[-1]), PUSH_RECORD)
    if not fileio.exists(record):
        return None
    with fileio.open(record, "r") as f:
        return json.load(f).get("fingerprint")


def _write_record(version_dir: str, fingerprint: str, source_uri: str) -> None:
    fileio.makedirs(os.path.join(version_dir, os.path.dirname(PUSH_RECORD)))
    with fileio.open(os.path.join(version_dir, PUSH_RECORD), "w") as f:
        f.write(json.dumps({"fingerprint": fingerprint, "source": source_uri, "pushed_at": time.time()}, indent=2))


def push_atomically(model_dir: str, model_base: str, fingerprint: str, source_uri: str,
                    add_files: Optional[Callable[[str], Any]] = None) -> str:
    """Copies model_dir to <model_base>/<version>/ so that no reader sees half a version.

    `add_files(version_dir)` writes more files into the version before it becomes visible (warm-up requests).

    Local paths: a hidden staging folder renamed into place (atomic on one filesystem). Object stores
    (gs://, s3://) cannot rename folders: there, as TFX does, saved_model.pb is copied last, the file
    TF Serving waits for.
    """
    fileio.makedirs(model_base)
    versions = served_versions(model_base)
    version = str(max(int(time.time()), versions[-1] + 1 if versions else 0))
    target = os.path.join(model_base, version)
    if "://" in model_base:
        io_utils.copy_dir(model_dir, target, deny_regex_patterns=[r"saved_model\.pb"])
        if add_files:
            add_files(target)
        _write_record(target, fingerprint, source_uri)
        io_utils.copy_file(os.path.join(model_dir, "saved_model.pb"), os.path.join(target, "saved_model.pb"))
        return version
    staging = os.path.join(model_base, f".staging-{version}-{os.getpid()}")
    io_utils.copy_dir(model_dir, staging)
    if add_files:
        add_files(staging)
    _write_record(staging, fingerprint, source_uri)
    os.rename(staging, target)
    return version


class Executor(tfx_pusher.Executor):
    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
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
        version = push_atomically(model_dir, model_base, fingerprint, model_dir,
                                  add_files=lambda version_dir: write_warmup_requests(model_dir, version_dir))
        io_utils.copy_dir(model_dir, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=os.path.join(model_base, version), pushed_version=version)
        logging.info("Model pushed as version %s in %s.", version, model_base)
