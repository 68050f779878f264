"""The served-model repository: TF Serving's `<base>/<version>/` layout, written by the Pusher (and `pneumonia
calibrate`) and read by the server, by one set of rules.

A version is a numeric folder holding `saved_model.pb`, the file TF Serving loads a version by: the server
serves only those, and the Pusher compares a new model with the newest of them. A numeric folder without it is
a push in progress on an object store (which writes that file last) or a broken one: never served, never the
baseline, but its number is taken, so the next push numbers past it rather than write into its leftovers.

Leaf module (the standard library and TensorFlow's gfile, for buckets): the server, the Pusher, the trainer's
export and the components all import it.
"""

import hashlib
import json
import os
import time
from typing import Any, Callable, Iterable, List, Optional

import tensorflow as tf

SERVING_MODEL_DIR = "Format-Serving"  # the SavedModel's folder in a TFX Model artifact (TFX's path_constants)
SAVED_MODEL_FILE = "saved_model.pb"  # what makes a version folder servable
THRESHOLD_ASSET = "threshold.json"  # the exported model's threshold and how it was made, in its assets/
EXTRA_ASSETS_DIR = "assets.extra"  # copied with a version; TF Serving's loader ignores it
WARMUP_FILE = os.path.join(EXTRA_ASSETS_DIR, "tf_serving_warmup_requests")  # WarmupConsts::kRequestsFileName
PUSH_RECORD = os.path.join(EXTRA_ASSETS_DIR, "push.json")  # the pushed model's fingerprint and source


def serving_model_dir(model_uri: str) -> str:
    """The SavedModel inside a Model artifact, where TFX's Trainer writes it (tfx.utils.path_utils, which the
    serving package does not import)."""
    return os.path.join(model_uri, SERVING_MODEL_DIR)


def threshold_file(saved_model_dir: str) -> str:
    """The threshold JSON of an exported SavedModel (trainer/signatures.py writes it as an asset)."""
    return os.path.join(saved_model_dir, "assets", THRESHOLD_ASSET)


def version_folders(model_base: str) -> List[int]:
    """Every numeric folder under `model_base`, ascending, servable or not: the numbers already taken."""
    if not tf.io.gfile.isdir(model_base):
        return []
    names = [name.rstrip("/") for name in tf.io.gfile.listdir(model_base)]  # buckets list folders as `name/`
    return sorted(int(name) for name in names if name.isdigit() and tf.io.gfile.isdir(os.path.join(model_base, name)))


def servable_versions(model_base: str) -> List[int]:
    """The versions a server may load, ascending: numeric folders holding saved_model.pb (staging folders are
    hidden, so never listed)."""
    return [
        version
        for version in version_folders(model_base)
        if tf.io.gfile.exists(os.path.join(model_base, str(version), SAVED_MODEL_FILE))
    ]


def next_version(model_base: str) -> int:
    """The number of the next push: the current time in seconds (sortable, readable), and past every number on
    disk, a broken version's included."""
    taken = version_folders(model_base)
    return max(int(time.time()), taken[-1] + 1 if taken else 0)


def model_fingerprint(model_dir: str) -> str:
    """sha256 over the SavedModel's files (names and bytes), independent of where it lies."""
    digest = hashlib.sha256()
    for dirpath, _, filenames in sorted(tf.io.gfile.walk(model_dir)):
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            digest.update(os.path.relpath(path, model_dir).encode() + b"\0")
            with tf.io.gfile.GFile(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def latest_fingerprint(model_base: str) -> Optional[str]:
    """The fingerprint the newest servable version was pushed with; None when there is none or it has no record."""
    versions = servable_versions(model_base)
    if not versions:
        return None
    record = os.path.join(model_base, str(versions[-1]), PUSH_RECORD)
    if not tf.io.gfile.exists(record):
        return None
    with tf.io.gfile.GFile(record, "r") as f:
        return json.load(f).get("fingerprint")


def _write_record(version_dir: str, fingerprint: str, source_uri: str) -> None:
    tf.io.gfile.makedirs(os.path.join(version_dir, EXTRA_ASSETS_DIR))
    with tf.io.gfile.GFile(os.path.join(version_dir, PUSH_RECORD), "w") as f:
        f.write(json.dumps({"fingerprint": fingerprint, "source": source_uri, "pushed_at": time.time()}, indent=2))


def _copy_tree(source: str, target: str, skip: Iterable[str] = ()) -> None:
    """Copies every file under `source` to the same relative path under `target`, but those named in `skip`."""
    for dirpath, _, filenames in tf.io.gfile.walk(source):
        relative = os.path.relpath(dirpath, source)
        folder = target if relative == os.curdir else os.path.join(target, relative)  # no `./` in a bucket's names
        tf.io.gfile.makedirs(folder)
        for name in filenames:
            if name not in skip:
                tf.io.gfile.copy(os.path.join(dirpath, name), os.path.join(folder, name))


def push_atomically(
    model_dir: str, model_base: str, fingerprint: str, source_uri: str, add_files: Optional[Callable[[str], Any]] = None
) -> str:
    """Copies model_dir to <model_base>/<next version>/ so that no reader sees half a version; returns the version.

    `add_files(version_dir)` writes more files into the version before it becomes visible (warm-up requests).

    Local paths: a hidden staging folder renamed into place (atomic on one filesystem). Object stores
    (gs://, s3://) cannot rename folders: there, as TFX does, saved_model.pb is copied last, the file
    that makes the version servable.
    """
    tf.io.gfile.makedirs(model_base)
    version = str(next_version(model_base))
    target = os.path.join(model_base, version)
    remote = "://" in model_base
    folder = target if remote else os.path.join(model_base, f".staging-{version}-{os.getpid()}")
    _copy_tree(model_dir, folder, skip=[SAVED_MODEL_FILE] if remote else [])
    if add_files:
        add_files(folder)
    _write_record(folder, fingerprint, source_uri)
    if remote:
        tf.io.gfile.copy(os.path.join(model_dir, SAVED_MODEL_FILE), os.path.join(target, SAVED_MODEL_FILE))
    else:
        os.rename(folder, target)
    return version
