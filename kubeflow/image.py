"""Image tags that pin the code: `pneumonia-pipeline:<version>-<digest>` (importable without TFX).

Every Kubeflow task imports the project from the image: the Trainer's `trainer.task.run_fn`, and the
custom components' executors (Pusher, data gate, report, served baseline), which TFX's user-module wheel
would not carry anyway. So the image is the unit of deployment, and its tag names the code it holds:
the digest is a sha256 over the files the image runs (what kubeflow/Dockerfile copies, less tests,
bench and docs). `pneumonia compile` refuses a tag whose digest is not this working tree's, so a spec
never runs code other than the code it was compiled from.
"""

import hashlib
import importlib.metadata
import os
from typing import Iterator

IMAGE_NAME = "pneumonia-pipeline"
PACKAGES = ("components", "kubeflow", "pipeline", "pneumonia", "serving", "trainer")
INSTALL_FILES = ("setup.py", "pyproject.toml", "requirements.txt", "constraints.txt")
DIGEST_LENGTH = 12
PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _code_files(project_dir: str) -> Iterator[str]:
    for name in INSTALL_FILES:
        if os.path.isfile(os.path.join(project_dir, name)):
            yield name
    for package in PACKAGES:
        for dirpath, dirnames, filenames in os.walk(os.path.join(project_dir, package)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            for filename in sorted(filenames):
                if not filename.endswith(".pyc"):
                    yield os.path.relpath(os.path.join(dirpath, filename), project_dir).replace(os.sep, "/")


def code_digest(project_dir: str = PROJECT_DIR) -> str:
    """sha256 over the relative paths and bytes of the files the image runs, first DIGEST_LENGTH hex digits."""
    digest = hashlib.sha256()
    for path in sorted(_code_files(project_dir)):
        digest.update(path.encode() + b"\0")
        with open(os.path.join(project_dir, path), "rb") as f:
            digest.update(f.read() + b"\0")
    return digest.hexdigest()[:DIGEST_LENGTH]


def pinned_tag(project_dir: str = PROJECT_DIR) -> str:
    """`<version>-<code digest>`: the tag to build and push this working tree's image under."""
    return f"{importlib.metadata.version(IMAGE_NAME)}-{code_digest(project_dir)}"


def default_image(project_dir: str = PROJECT_DIR) -> str:
    return f"{IMAGE_NAME}:{pinned_tag(project_dir)}"


def check_image(image: str, project_dir: str = PROJECT_DIR) -> None:
    """Refuses an image reference whose tag does not carry this working tree's code digest."""
    expected = pinned_tag(project_dir)
    name, _, tag = image.rpartition(":")
    if "@" in image or not name or tag != expected:
        raise ValueError(
            f"--image {image}: its tag does not pin this working tree's code; build and push it as "
            f"REGISTRY/{IMAGE_NAME}:{expected} (see kubeflow/README.md)"
        )
