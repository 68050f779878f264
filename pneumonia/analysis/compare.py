"""`pneumonia compare`'s tables over the latest evaluation of every architecture under a run root: how each
model was trained, its TFMA metrics per split and source with their intervals, its border attention, and
(on request) the threshold policies, the OOD guard and the k-shot calibration."""

from typing import Dict, List, Tuple

import numpy as np

from components import metrics_vocabulary as vocabulary
from components.report import attention, tfma_metrics
from pipeline.config import BLESSING_SPLIT
from pneumonia.analysis.kshot import kshot_rows
from pneumonia.analysis.policies import policy_rows
from pneumonia.analysis.tables import format_number, format_rows
from pneumonia.runs import evaluation, scoring
from pneumonia.runs.store import Evaluated, latest_evaluations

COMPARE_KEYS = (
    vocabulary.EXAMPLE_COUNT,
    vocabulary.AUC,
    *(
        vocabulary.at_threshold(key)
        for key in (vocabulary.ACCURACY, vocabulary.RECALL, vocabulary.SPECIFICITY, vocabulary.F1)
    ),
    vocabulary.ACCURACY,
    vocabulary.RECALL,
    vocabulary.SPECIFICITY,
    vocabulary.F1,
)


def reported_slices(table: Dict[str, Dict[str, float]]) -> List[Tuple[str, str]]:
    """(TFMA slice name, shown name): each whole split, then each source of a split that pools several
    (the external set: rsna and ieee8023), in split order."""
    splits = {vocabulary.slice_parts(name)[vocabulary.SPLIT]: name for name in table if vocabulary.is_split_slice(name)}
    sources: Dict[str, Dict[str, str]] = {}
    for name in table:
        parts = vocabulary.slice_parts(name)
        if set(parts) == {vocabulary.SOURCE, vocabulary.SPLIT}:
            sources.setdefault(parts[vocabulary.SPLIT], {})[parts[vocabulary.SOURCE]] = name
    chosen = []
    for split in vocabulary.ordered_splits(splits, BLESSING_SPLIT):
        chosen.append((splits[split], split))
        if len(sources.get(split, {})) > 1:
            chosen += [(name, f"{split}: {source}") for source, name in sorted(sources[split].items())]
    return chosen


def model_rows(evaluated: List[Evaluated]) -> List[List[str]]:
    """Header plus one row per architecture: how it was trained, what it cost, the threshold it chose."""
    header = [
        "architecture",
        "size",
        "weights",
        "label smoothing",
        "best epoch by",
        "best val value",
        "parameters",
        "best epoch / run",
        "train min",
        "train img/s",
        "threshold (policy)",
        "val sens@thr",
        "val spec@thr",
        "blessed",
    ]
    rows = [header]
    for item in evaluated:
        training, model = item.model.get("training", {}), item.model
        epochs = f"{training['best_epoch']} / {training['epochs_run']}" if "epochs_run" in training else "-"
        minutes = training.get("train_seconds")
        rows.append(
            [
                item.architecture,
                str(item.image_size),
                str(item.recipe.get("weights", "-")),
                str(item.recipe.get("label_smoothing", "-")),
                str(item.recipe.get("early_stopping_metric", "-")),
                format_number(training.get("best_validation_value"), 4),
                f"{training['parameters']:,}" if "parameters" in training else "-",
                epochs,
                format_number(minutes / 60 if minutes is not None else None, 1),
                format_number(training.get("train_images_per_second"), 1),
                f"{format_number(model.get('value'))} ({model.get('policy', '-')})",
                format_number(model.get("sensitivity")),
                format_number(model.get("specificity")),
                str(item.blessed),
            ]
        )
    return rows


def compare_rows(evaluated: List[Evaluated]) -> List[List[str]]:
    """Header plus one row per architecture and reported slice (whole splits, and sources within them)."""
    header = ["architecture", "slice"] + [vocabulary.SHORT_TITLES[key] for key in COMPARE_KEYS]
    rows = [header]
    for item in evaluated:
        table = evaluation.slice_metrics(item.evaluation)
        for name, shown in reported_slices(table):
            row = table[name]
            undefined = vocabulary.undefined_metrics(row)  # e.g. AUC of the all-NORMAL RSNA images: TFMA says 0
            cells = [
                format_number(row.get(key), 0)
                if key == vocabulary.EXAMPLE_COUNT
                else "-"
                if key in undefined
                else tfma_metrics.interval_cell(row, key)
                if tfma_metrics.has_interval(key)
                else format_number(row.get(key))
                for key in COMPARE_KEYS
            ]
            rows.append([item.architecture, shown] + cells)
    return rows


def attention_rows(evaluated: List[Evaluated]) -> List[List[str]]:
    """Header plus one row per architecture and split its report explained: the mean Grad-CAM border share per
    outcome at the tuned threshold (components/report/attention.py; 0.4375 is an even map), images in brackets."""
    header = ["architecture", "split"] + [f"border share {name}" for name in attention.columns()]
    rows = [header]
    for item in evaluated:
        for split, outcomes in item.attention.items():
            rows.append(
                [item.architecture, split]
                + [f"{format_number(outcomes[name].mean)} ({outcomes[name].images})" for name in attention.columns()]
            )
    if len(rows) == 1:
        rows.append(["-", "no report with border attention under this root"] + ["-"] * len(attention.columns()))
    return rows


def ood_rows(evaluated: List[Evaluated]) -> List[List[str]]:
    """Header plus one row per architecture and split: the share of images the model's OOD guard flags, and the
    model's error rate at its threshold among the flagged and the other images (scores every example again)."""
    splits = ["train", BLESSING_SPLIT, "test", "external"]
    header = ["architecture", "split", "images", "flagged OOD", "error rate flagged", "error rate not flagged"]
    rows = [header]
    for item in evaluated:
        for split, (sample, outputs) in scoring.scored_outputs(item.examples_uri, splits, item.model_uri).items():
            labels = np.array(sample.labels)
            if "in_distribution" not in outputs:
                rows.append([item.architecture, split, str(labels.size), "no guard", "-", "-"])
                continue
            flagged = ~outputs["in_distribution"]
            wrong = (outputs["probability"] >= outputs["threshold"]) != (labels == 1)
            rows.append(
                [
                    item.architecture,
                    split,
                    str(labels.size),
                    format_number(flagged.mean()),
                    format_number(wrong[flagged].mean() if flagged.any() else None),
                    format_number(wrong[~flagged].mean() if (~flagged).any() else None),
                ]
            )
    return rows


def compare(
    metadata_path: str, markdown: bool = False, policies: bool = False, kshot: bool = False, ood: bool = False
) -> str:
    """Tables over the latest evaluation of every architecture: how each model was trained (cost, threshold
    chosen on validation), its metrics per split at the tuned threshold and at 0.5, (`policies`) what
    each threshold policy would have given and (`ood`) the share of each split its OOD guard flags; `kshot`
    prints instead the one table of what calibrating on k labelled test or external images gives on the
    rest. `policies`, `ood` and `kshot` score every model again."""
    evaluated = latest_evaluations(metadata_path)
    if kshot:
        return "\n\n".join(
            format_rows(rows, markdown, label_columns=columns) for rows, columns in zip(kshot_rows(evaluated), (3, 2))
        )
    tables = [
        format_rows(model_rows(evaluated), markdown, label_columns=1),
        format_rows(compare_rows(evaluated), markdown),
        format_rows(attention_rows(evaluated), markdown),
    ]
    if policies:
        tables.append(format_rows(policy_rows(evaluated), markdown))
    if ood:
        tables.append(format_rows(ood_rows(evaluated), markdown))
    return "\n\n".join(tables)
