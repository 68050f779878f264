"""`prepare` on a distributed Beam runner started here: DaskRunner on a dask.distributed LocalCluster of two
worker processes should write byte for byte what the DirectRunner writes (prepare is deterministic by
design). With Beam 2.74 it does not: a step of prepare's pipeline receives a dict where Beam's other runners
pass it a record (a DaskRunner defect; a plain AsDict side input works there). The test stays, strict, so
that the Beam upgrade that fixes it says so."""

import os

import pytest
from dask.distributed import LocalCluster

from pneumonia.data import prepare, runners
from pneumonia.data import sources as data_sources
from tests.conftest import copy_subset

DASK_RUNNER = "apache_beam.runners.dask.dask_runner.DaskRunner"  # Beam knows it by its full name only


def tree(folder: str) -> dict:
    """Every file under `folder` by relative path, with its bytes."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                found[os.path.relpath(os.path.join(root, name), folder)] = f.read()
    return found


@pytest.mark.scale
@pytest.mark.xfail(strict=True, raises=AttributeError, reason="Beam 2.74 DaskRunner hands a step a dict")
def test_the_dask_runner_writes_what_the_direct_runner_writes(shared_data, tmp_path):
    data = copy_subset(
        shared_data,
        str(tmp_path / "raw"),
        {"chest_xray/train/NORMAL": 12, "chest_xray/train/PNEUMONIA": 12, "chest_xray/test/NORMAL": 4},
    )
    sources = [data_sources.Source.parse(f"kermany={data}/chest_xray")]
    prepare.prepare(sources, str(tmp_path / "direct"))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        prepare.prepare(
            sources,
            str(tmp_path / "dask"),
            beam_args=[f"--runner={DASK_RUNNER}", f"--dask_client_address={cluster.scheduler_address}"],
        )
    direct, dask = tree(str(tmp_path / "direct")), tree(str(tmp_path / "dask"))
    assert sorted(dask) == sorted(direct) and any(name.endswith(".gz") for name in direct)
    assert [name for name in direct if dask[name] != direct[name]] == []


def test_a_runner_that_is_not_installed_fails_in_one_line():
    assert runners.check([f"--runner={DASK_RUNNER}"]) == DASK_RUNNER
    with pytest.raises(
        data_sources.PrepareError, match=r"^Beam runner no_such_module\.Runner is not installed here \(.*\)$"
    ):
        runners.check(["--runner=no_such_module.Runner"])
    with pytest.raises(
        data_sources.PrepareError, match=r"^unknown Beam runner NoSuchRunner: Unexpected pipeline runner"
    ):
        runners.check(["--runner=NoSuchRunner"])
