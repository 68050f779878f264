"""EvaluationReport: a TFX component after the Evaluator that writes an HTML report with its figures.

The output is a `File` artifact (a folder holding `index.html` and the PNGs it embeds): a generic
type that LocalDagRunner and the Kubeflow V2 compiler both know, so no custom type has to be
importable on the cluster.
"""

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.experimental.simple_artifacts import File
from tfx.types.standard_artifacts import Examples, Model, ModelBlessing, ModelEvaluation

from components.report import executor


@component
def EvaluationReport(  # noqa: N802 (TFX component name)
    examples: InputArtifact[Examples],
    model: InputArtifact[Model],
    evaluation: InputArtifact[ModelEvaluation],
    report: OutputArtifact[File],
    model_blessing: InputArtifact[ModelBlessing] = None,
    max_images_per_split: Parameter[int] = executor.Settings.max_images_per_split,
    explained_per_group: Parameter[int] = executor.Settings.explained_per_group,
    blessing_split: Parameter[str] = executor.Settings.blessing_split,
):
    blessed = None
    if model_blessing is not None and model_blessing.has_custom_property("blessed"):
        blessed = bool(model_blessing.get_int_custom_property("blessed"))
    index = executor.generate(
        examples.uri,
        artifact_utils.decode_split_names(examples.split_names),
        model.uri,
        evaluation.uri,
        report.uri,
        blessed,
        executor.Settings(
            max_images_per_split=max_images_per_split,
            explained_per_group=explained_per_group,
            blessing_split=blessing_split,
        ),
    )
    report.set_string_custom_property("index", index)
