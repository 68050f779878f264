"""ThresholdCalibrator: a TFX component between the Trainer and the Evaluator that sets the served
threshold on the site's labelled calibration split.

The Trainer chose its threshold on validation, carved from the training hospital; at the site the scores
shift. When the examples hold a calibration split, this component applies the run's threshold policy
(the one the Trainer used, as its model records it) there and outputs a calibrated model: the same
weights, the new threshold in both signatures. Without that split it passes the trained model through and
says so. The Evaluator, its blessing and the Pusher act on this component's output.
"""

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import Examples, Model

from components.threshold_calibrator import executor

CALIBRATION_SPLIT = "calibration"


@component
def ThresholdCalibrator(  # noqa: N802 (TFX component name)
    examples: InputArtifact[Examples],
    model: InputArtifact[Model],
    calibrated_model: OutputArtifact[Model],
    calibration_split: Parameter[str] = CALIBRATION_SPLIT,
    bootstrap_samples: Parameter[int] = 200,
    seed: Parameter[int] = 42,
):
    """Records on `calibrated_model`: calibrated (0/1), old and new threshold, the new threshold's bootstrap
    interval, the calibration counts, and a note when it passed the model through."""
    record = executor.run(
        examples.uri,
        artifact_utils.decode_split_names(examples.split_names),
        model.uri,
        calibrated_model.uri,
        calibration_split,
        bootstrap_samples,
        seed,
    )
    calibrated_model.set_int_custom_property("calibrated", int(record["calibrated"]))
    calibrated_model.set_float_custom_property("old_threshold", record["old_threshold"])
    calibrated_model.set_float_custom_property("new_threshold", record["new_threshold"])
    if record["calibrated"]:
        lower, upper = record["threshold_interval"]
        calibrated_model.set_float_custom_property("threshold_lower", lower)
        calibrated_model.set_float_custom_property("threshold_upper", upper)
        calibrated_model.set_int_custom_property("calibration_normal", record["normal"])
        calibrated_model.set_int_custom_property("calibration_pneumonia", record["pneumonia"])
    else:
        calibrated_model.set_string_custom_property("note", record["note"])
