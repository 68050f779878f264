"""DataValidationGate: a TFX component that fails the run when the data has anomalies or skew.

ExampleValidator only records anomalies; the Trainer is made to depend on this gate so that a
dataset breaking the schema contract never trains or pushes a model.
"""

import os

from tfx.dsl.component.experimental.annotations import InputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies, ExampleStatistics, Schema

from components.validation_gate import executor


@component
def DataValidationGate(  # noqa: N802 (TFX component name)
    anomalies: InputArtifact[ExampleAnomalies],
    statistics: InputArtifact[ExampleStatistics],
    schema: InputArtifact[Schema],
    skew_splits: Parameter[str] = "",
):
    """`skew_splits`: comma-separated splits compared with `train` by the schema's skew comparators."""
    executor.check(
        anomalies.uri,
        artifact_utils.decode_split_names(anomalies.split_names),
        statistics_uri=statistics.uri,
        schema_path=os.path.join(schema.uri, "schema.pbtxt"),
        skew_splits=[s for s in skew_splits.split(",") if s],
    )
