"""Shared fixtures: the real X-rays in ../shared/data, and a small real subset of them."""

import os
import shutil

import pytest

from pneumonia.data.sources import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> str:
    path = shared_data_dir()
    if path is None:
        message = "real images not found: ../shared/data is missing beside the checkout (or set PNEUMONIA_SHARED_DATA)"
        if os.environ.get("CI") == "true":
            pytest.fail(message + "; CI must have it")
        pytest.skip(message)
    return path


def copy_subset(shared: str, dest: str, per_class: dict) -> str:
    """Copies the first N files (sorted) of each folder, e.g. {'chest_xray/train/NORMAL': 64}."""
    for folder, count in per_class.items():
        os.makedirs(os.path.join(dest, folder))
        for name in sorted(os.listdir(os.path.join(shared, folder)))[:count]:
            shutil.copyfile(os.path.join(shared, folder, name), os.path.join(dest, folder, name))
    return dest


SMALL_SUBSET = {
    "chest_xray/train/NORMAL": 64,
    "chest_xray/train/PNEUMONIA": 64,
    "chest_xray/test/NORMAL": 16,
    "chest_xray/test/PNEUMONIA": 16,
    "external/NORMAL": 16,
    "external/PNEUMONIA": 16,
}


@pytest.fixture(scope="session")
def small_subset(shared_data, tmp_path_factory) -> str:
    """About 64 real images per class in train, plus some test and external images."""
    return copy_subset(shared_data, str(tmp_path_factory.mktemp("subset")), SMALL_SUBSET)
