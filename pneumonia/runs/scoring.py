"""Scores every example of a run's splits again with its exported model (the analyses that need per-image
outputs, not TFMA's aggregates)."""

from typing import Dict, List, Tuple

import numpy as np

from components.report import scoring


def scored_outputs(examples_uri: str, splits: List[str], model_uri: str) -> Dict[str, tuple]:
    """{split: (its examples, the numeric outputs of the exported model's serving signature for them)} over
    every example of each split, the model loaded once."""
    serve = scoring.serving_function(model_uri)
    scored = {}
    for split in splits:
        sample = scoring.read_split(examples_uri, split, cap=10**9)
        scored[split] = (sample, scoring.score(serve, sample.serialized))
    return scored


def score_splits(
    examples_uri: str, splits: List[str], model_uri: str
) -> Dict[str, Tuple[np.ndarray, np.ndarray, List[str]]]:
    """{split: (labels, pneumonia probabilities, source paths)} over every example of each split."""
    return {
        split: (np.array(sample.labels), outputs["probability"], [source.split(":", 1)[1] for source in sample.sources])
        for split, (sample, outputs) in scored_outputs(examples_uri, splits, model_uri).items()
    }
