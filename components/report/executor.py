"""Builds the evaluation report: figures, per-slice metrics, Grad-CAM panels and a model card, as HTML.

Inputs are plain folders (examples, model and evaluation artifact URIs, local or in a bucket: files go
through tf.io.gfile), so `pneumonia report` regenerates a run's report with the same code the pipeline
component runs. Scoring and explaining live in scoring.py, the page's HTML in page.py; this module decides
what is drawn, from which split.
"""

import dataclasses
import logging
import os
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from components import metrics_vocabulary as vocabulary
from components.report import attention, page, plots, scoring, tfma_metrics

INDEX = "index.html"
GROUPS = (  # (file stem, title, true label, predicted label)
    ("true_positives", "most confident true positives", 1, 1),
    ("true_negatives", "most confident true negatives", 0, 0),
    ("false_positives", "worst false positives", 0, 1),
    ("false_negatives", "worst false negatives", 1, 0),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What the report draws, and from how many images."""

    max_images_per_split: int = 200  # images scored per evaluated split for the curves and Grad-CAM
    explained_per_group: int = 2  # images per Grad-CAM panel (TP, TN, FP, FN)
    samples_per_class: int = 6
    blessing_split: str = "eval"  # the split the Evaluator blesses on (the pipeline passes its BLESSING_SPLIT)


class Figures:
    """The page's figures, each drawn into `out_dir` as it is added, with its caption, in page order."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.shown: List[Tuple[str, str]] = []  # (file name, caption)

    def add(self, name: str, caption: str, draw, *args) -> None:
        draw(*args, os.path.join(self.out_dir, name))
        self.shown.append((name, caption))


def draw_data_and_scores(
    figures: Figures,
    samples: Dict[str, scoring.SplitSample],
    scores: Dict[str, plots.Scores],
    reported: List[str],
    info: dict,
    settings: Settings,
) -> None:
    """The class distribution, sample images, and the curves, confusion and calibration of the scored splits."""
    threshold, first = float(info["value"]), next(iter(samples))
    counts = {
        (split, dataset): (sample.counts[(dataset, 0)], sample.counts[(dataset, 1)])
        for split, sample in samples.items()
        for dataset in sorted({d for d, _ in sample.counts})
    }
    figures.add(
        "class_distribution.png",
        "Class distribution per split and dataset (all records)",
        plots.class_distribution,
        counts,
    )
    figures.add(
        "samples.png",
        f"Sample images per class ({first} split)",
        plots.sample_grid,
        scoring.sample_images(samples[first], int(info["image_size"]), settings.samples_per_class),
    )
    figures.add(
        "roc_pr.png",
        "ROC and precision-recall curves",
        plots.roc_and_pr_curves,
        {split: scores[split] for split in reported},
    )
    figures.add(
        "precision_recall_threshold.png",
        "Precision and recall vs threshold",
        plots.precision_recall_vs_threshold,
        scores,
        threshold,
    )
    figures.add(
        "youden.png",
        f"Youden's J vs threshold; the tuned threshold is marked ({info.get('policy')} on {settings.blessing_split})",
        plots.youden_vs_threshold,
        scores,
        threshold,
    )
    figures.add(
        "confusion.png",
        "Confusion matrices at 0.5 and at the tuned threshold",
        plots.confusion_matrices,
        scores,
        threshold,
    )
    figures.add("calibration.png", "Calibration (reliability) per split", plots.calibration, scores)


def explain_splits(
    figures: Figures,
    model_uri: str,
    info: dict,
    samples: Dict[str, scoring.SplitSample],
    scores: Dict[str, plots.Scores],
    reported: List[str],
    settings: Settings,
) -> Tuple[List[str], Dict[str, Dict[str, attention.OutcomeShare]]]:
    """Grad-CAM panels of the reported splits and the border attention of every scored one; (notes on what
    could not be drawn, the attention table), also written to attention.json."""
    threshold, image_size = float(info["value"]), int(info["image_size"])
    try:
        model, layer = scoring.keras_model(model_uri, info)
    except scoring.ReportError as error:
        logging.warning("Grad-CAM skipped: %s", error)
        return [f"Grad-CAM not drawn: {error}"], {}
    notes = []
    for split in reported:
        for stem, title, true_label, predicted_label in GROUPS:
            indices = scoring.select(
                scores[split], threshold, true_label, predicted_label, settings.explained_per_group
            )
            if indices.size == 0:
                notes.append(f"{split}: nothing to show for {title} among {scores[split].labels.size} scored images")
                continue
            explained = scoring.explain(model, layer, image_size, samples[split], scores[split], indices, threshold)
            figures.add(
                f"gradcam_{split}_{stem}.png",
                f"{split}: {title} (layer {layer})",
                plots.gradcam_panels,
                explained,
                f"{split}: {title}",
            )
    # Every scored split, validation too: where the model looks may choose a model, test may not.
    table = {
        split: scoring.border_attention(model, layer, image_size, samples[split], split_scores, threshold)
        for split, split_scores in scores.items()
    }
    attention.write(os.path.join(figures.out_dir, attention.ATTENTION_FILE), table)
    return notes, table


def generate(
    examples_uri: str,
    split_names: List[str],
    model_uri: str,
    evaluation_uri: str,
    out_dir: str,
    blessed: Optional[bool] = None,
    settings: Settings = Settings(),
) -> str:
    """Writes index.html and its PNGs into out_dir; returns the index path."""
    tf.io.gfile.makedirs(out_dir)
    info = scoring.model_info(model_uri)
    splits = vocabulary.ordered_splits(split_names, settings.blessing_split)
    samples = {split: scoring.read_split(examples_uri, split, settings.max_images_per_split) for split in splits}
    evaluated = [split for split in splits if split != vocabulary.TRAIN_SPLIT]
    serve = scoring.serving_function(model_uri)
    outputs = {split: scoring.score(serve, samples[split].serialized) for split in evaluated}
    scores = {
        split: plots.Scores(np.array(samples[split].labels), outputs[split]["probability"]) for split in evaluated
    }
    reported = [split for split in evaluated if split != settings.blessing_split] or evaluated
    figures = Figures(out_dir)
    draw_data_and_scores(figures, samples, scores, reported, info, settings)
    notes, attention_table = explain_splits(figures, model_uri, info, samples, scores, reported, settings)
    ood_shares = {split: scoring.ood_share(outputs[split]) for split in evaluated}
    content = page.render(
        info,
        blessed,
        samples,
        scores,
        ood_shares,
        tfma_metrics.slice_metrics(evaluation_uri),
        figures.shown,
        notes,
        attention_table,
        settings.blessing_split,
        settings.max_images_per_split,
    )
    index = os.path.join(out_dir, INDEX)
    with tf.io.gfile.GFile(index, "w") as f:
        f.write(content)
    return index
