"""Where a prepare writes: it refuses to replace other data, builds the dataset aside and moves it into place
only once its report passes, so a reader never sees half a dataset (locally one rename; on an object store
the report moves last)."""

import os
from typing import Optional

import tensorflow as tf

from pneumonia.data import audit
from pneumonia.data.sources import PrepareError


def remove(folder: str) -> None:
    try:
        tf.io.gfile.rmtree(folder)
    except tf.errors.NotFoundError:
        pass


def move_folder(source: str, target: str) -> None:
    """Locally one atomic rename. An object store has no folders to rename: each file moves on its own, the
    report last, so a reader (which looks for the report first) never takes half the shards for a dataset."""
    if "://" not in source:
        os.rename(source, target)
        return
    files = [os.path.join(folder, name) for folder, _, names in tf.io.gfile.walk(source) for name in names]
    for path in sorted(files, key=lambda p: os.path.basename(p) == audit.REPORT_NAME):
        destination = os.path.join(target, os.path.relpath(path, source))
        tf.io.gfile.makedirs(os.path.dirname(destination))
        tf.io.gfile.rename(path, destination, overwrite=True)
    remove(source)


def check_output(out: str, fingerprint: str, overwrite: bool) -> Optional[dict]:
    """The existing report when `out` already holds exactly this input; raises if it holds other data."""
    if audit.is_prepared(out):
        previous = audit.read_report(out)
        if previous.get("fingerprint") == fingerprint and previous.get("format") == audit.FORMAT_VERSION:
            return previous
        if not overwrite:
            raise PrepareError(f"{out} already holds a different prepared dataset; pass --overwrite to replace it")
    elif tf.io.gfile.isdir(out) and tf.io.gfile.listdir(out) and not overwrite:
        raise PrepareError(
            f"{out} is not empty and holds no {audit.REPORT_NAME}; pass --overwrite or choose another --out"
        )
    return None
