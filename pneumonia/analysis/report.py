"""`pneumonia report`: a run's HTML evaluation report again, from the inputs its EvaluationReport node recorded
(so it regenerates exactly that run's report, even when the node itself failed)."""

import os
from typing import Optional

from components.report import executor
from pipeline.config import BLESSING_SPLIT
from pneumonia.runs.store import report_inputs


def write_report(
    metadata_path: str, pipeline_name: str, out_dir: str, run: Optional[str] = None, max_images: Optional[int] = None
) -> str:
    """Regenerates a run's report into out_dir/<run>/ and returns the index.html path; `max_images` overrides
    how many images per split the curves and panels score."""
    inputs = report_inputs(metadata_path, pipeline_name, run)
    settings = executor.Settings(
        blessing_split=BLESSING_SPLIT, **({"max_images_per_split": max_images} if max_images else {})
    )
    return executor.generate(
        inputs.examples,
        inputs.split_names,
        inputs.model,
        inputs.evaluation,
        os.path.join(out_dir, inputs.run.replace(os.sep, "_")),
        inputs.blessed,
        settings,
    )
