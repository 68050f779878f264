"""DataValidationGate: a TFX component that fails the run when the data has anomalies.

ExampleValidator only records anomalies; the Trainer is made to depend on this gate so that a
dataset breaking the schema contract never trains or pushes a model.
"""
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies

from components.validation_gate import executor


@component
def DataValidationGate(anomalies: InputArtifact[ExampleAnomalies]):  # noqa: N802 (TFX component name)
    executor.check(anomalies.uri, artifact_utils.decode_split_names(anomalies.split_names))
