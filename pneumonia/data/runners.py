"""The Beam runner that `beam_args` name, checked before a job starts: a runner that is not installed fails in
one line, not in a traceback from deep inside Beam once the inputs have been listed.

Runners that start here from the package registries: DirectRunner, and DaskRunner (`dask` and `distributed`,
pinned in requirements.txt) against a `dask.distributed` cluster given by `--dask_client_address`. Not here:
PrismRunner (Beam downloads its Go binary from GitHub at run time), Flink and Spark (their job servers need a
JVM), Dataflow (a Google Cloud project). docs/scaling.md says how to point a job at them.
"""

from typing import List

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners import runner

from pneumonia.data.sources import PrepareError


def check(beam_args: List[str]) -> str:
    """The runner's name, after loading it; PrepareError in one line if Beam does not know it or its packages
    are missing."""
    name = PipelineOptions(beam_args).view_as(StandardOptions).runner or "DirectRunner"
    try:
        runner.create_runner(name)
    except ImportError as error:
        raise PrepareError(f"Beam runner {name} is not installed here ({error})") from None
    except ValueError as error:
        raise PrepareError(f"unknown Beam runner {name}: {str(error).splitlines()[0]}") from None
    return name
