"""The report's HTML page: model card, TFMA's metrics per slice, the scored images' figures and border attention.

Plain strings from figures already computed (components/report/executor.py computes them), so the wording
and layout of the page change here without touching how anything is scored.
"""

import html
from typing import Dict, List, Optional, Tuple

import numpy as np

from components import metrics_vocabulary as vocabulary
from components.report import attention, plots, tfma_metrics
from components.report.scoring import SplitSample


def _cell(value: Optional[float], key: str = "") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "<td>-</td>"
    return f"<td>{value:.0f}</td>" if key == vocabulary.EXAMPLE_COUNT else f"<td>{value:.3f}</td>"


def _table(header: List[str], rows: List[str]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for title in header)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _metric_cells(row: Dict[str, float], keys: List[str]) -> str:
    """One slice's cells: "-" where the slice cannot define the metric, its interval where it has one."""
    undefined = vocabulary.undefined_metrics(row)
    return "".join(
        "<td>-</td>"
        if key in undefined
        else f"<td>{html.escape(tfma_metrics.interval_cell(row, key))}</td>"
        if tfma_metrics.has_interval(key)
        else _cell(row.get(key), key)
        for key in keys
    )


def slice_table(table: Dict[str, Dict[str, float]], blessing_split: str) -> str:
    """TFMA's numbers per slice, one table per split (the whole split first, then its sources and seen/unseen
    patients), its label and pathogen crossings collapsed below it, and the slices pooled over splits last.
    A metric the slice cannot define shows "-"."""
    keys = [key for key in vocabulary.METRIC_TITLES if any(key in row for row in table.values())]
    header = ["slice"] + [vocabulary.METRIC_TITLES[key] for key in keys]

    def rows(names: List[str], shown) -> str:
        lines = [f"<tr><td>{html.escape(shown(name))}</td>{_metric_cells(table[name], keys)}</tr>" for name in names]
        return f'<div class="wide">{_table(header, lines)}</div>'

    def within(name: str) -> str:
        rest = [(k, v) for k, v in vocabulary.slice_parts(name).items() if k != vocabulary.SPLIT]
        return vocabulary.slice_name(rest) if rest else "whole split"

    def pooled_name(name: str) -> str:
        return vocabulary.POOLED if name == vocabulary.OVERALL else name

    by_split: Dict[str, List[str]] = {}
    for name in table:
        by_split.setdefault(vocabulary.slice_parts(name).get(vocabulary.SPLIT, ""), []).append(name)
    sections = []
    for split in vocabulary.ordered_splits([split for split in by_split if split], blessing_split):
        whole = vocabulary.slice_name([(vocabulary.SPLIT, split)])
        names = sorted(by_split[split], key=lambda n: (n != whole, not vocabulary.is_split_slice(n), n))
        crossed = [n for n in names if set(vocabulary.slice_parts(n)) & set(vocabulary.CROSSING_FEATURES)]
        sections.append(f"<h3>{html.escape(split)}</h3>" + rows([n for n in names if n not in crossed], within))
        if crossed:
            sections.append(
                f"<details><summary>{html.escape(split)} by label and pathogen ({len(crossed)} slices)"
                f"</summary>{rows(crossed, within)}</details>"
            )
    pooled = sorted(by_split.get("", []), key=lambda n: (n != vocabulary.OVERALL, n))
    if pooled:
        sections.append(
            f"<details><summary>pooled over every evaluated split ({len(pooled)} slices; no one "
            f"split's figures)</summary>{rows(pooled, pooled_name)}</details>"
        )
    return "\n".join(sections)


def scored_table(scores: Dict[str, plots.Scores], ood_shares: Dict[str, Optional[float]], threshold: float) -> str:
    """What the report's own figures rest on: the scored images of each split, and the share the model's
    out-of-distribution guard flags."""
    rows = []
    for split, split_scores in scores.items():
        ranks = split_scores.has_both_classes
        sensitivity, specificity = plots.sensitivity_and_specificity(split_scores, threshold)
        values = [
            float(split_scores.labels.size),
            plots.roc_auc(split_scores) if ranks else None,
            plots.average_precision(split_scores) if ranks else None,
            sensitivity,
            specificity,
            plots.brier_score(split_scores),
            plots.expected_calibration_error(split_scores),
            ood_shares[split],
        ]
        rows.append(
            f"<tr><td>{html.escape(split)}</td>{_cell(values[0], vocabulary.EXAMPLE_COUNT)}"
            + "".join(_cell(v) for v in values[1:])
            + "</tr>"
        )
    return _table(
        [
            "split",
            "scored images",
            "AUC",
            "AUC-PR (AP)",
            "sensitivity at tuned",
            "specificity at tuned",
            "Brier",
            "ECE",
            "flagged OOD",
        ],
        rows,
    )


def model_card(
    info: dict,
    blessed: Optional[bool],
    samples: Dict[str, SplitSample],
    table: Dict[str, Dict[str, float]],
    blessing_split: str,
) -> str:
    training = samples.get(vocabulary.TRAIN_SPLIT)
    trained_on = (
        ", ".join(
            f"{dataset}: {training.counts[(dataset, 0)]} NORMAL / {training.counts[(dataset, 1)]} PNEUMONIA"
            for dataset in sorted({d for d, _ in training.counts})
        )
        if training
        else "the examples artifact holds no train split"
    )
    auc_lines = "".join(
        f"<li>{html.escape(name)}: AUC {row[vocabulary.AUC]:.3f}</li>"
        for name, row in sorted(table.items())
        if vocabulary.is_split_slice(name) and vocabulary.AUC in row
    )
    policy = info.get("policy", "?")
    # A ThresholdCalibrator's policy names where it chose ("youden on the calibration split").
    where = "" if " on " in str(policy) else " on the validation split"
    return f"""
<h2>Model card</h2>
<p><b>Model:</b> {html.escape(str(info.get("architecture")))} at {info.get("image_size")} px;
blessed: {html.escape(str(blessed))}.</p>
<p><b>Intended use:</b> decision support for reading frontal chest X-rays (NORMAL vs PNEUMONIA), to prioritise
and double-check, always reviewed by a clinician. It is <b>not a diagnosis</b> and not a medical device.</p>
<p><b>Training data:</b> {html.escape(trained_on)}. The Kermany images are pediatric (children aged 1 to 5,
one hospital); validation (<code>{blessing_split}</code>) is carved from training by patient.</p>
<p><b>Metrics per slice</b> (TFMA, full splits; see the table below):</p><ul>{auc_lines}</ul>
<p><b>Limitations:</b> trained on pediatric images only, so adults, other hospitals and other devices are out
of distribution; the external (adult) split shows how far performance falls there, and its class mix differs
from the training data. The threshold was tuned on pediatric validation images, so sensitivity and
specificity move on other populations. Probabilities are not calibrated risks (see the calibration plot).
Grad-CAM maps are coarse (one feature-map cell spans many pixels) and show what the model used,
not where disease is.</p>
<p><b>Threshold:</b> {float(info["value"]):.4f}, chosen by <code>{html.escape(str(policy))}</code>{where}
({info.get("examples", "?")} images): sensitivity there
{float(info.get("sensitivity", float("nan"))):.3f}, specificity {float(info.get("specificity", float("nan"))):.3f}.
Predictions at or above it are PNEUMONIA.</p>
"""


def attention_section(table: Dict[str, Dict[str, attention.OutcomeShare]]) -> str:
    """The border-attention table: where Grad-CAM looks, per split and outcome."""
    if not table:
        return ""
    rows = [
        f"<tr><td>{html.escape(split)}</td>"
        + "".join(
            f"<td>{'—' if share.mean != share.mean else f'{share.mean:.3f}'} ({share.images})</td>"
            for share in (outcomes[name] for name in attention.columns())
        )
        + "</tr>"
        for split, outcomes in table.items()
    ]
    return f"""<h2>Where the model looks: border attention</h2>
<p>Share of each image's Grad-CAM mass (the predicted class at the tuned threshold) that falls in the outer
{attention.BORDER_BAND:.1%} of each side, where film edges, collimation borders and markers lie: a band of
{attention.BORDER_AREA:.2%} of the area, so an even map scores {attention.BORDER_AREA:.4f} and a model that reads
the lungs scores well below it. Mean per outcome at the tuned threshold over the scored images (their number in
brackets).</p>
{_table(["split"] + attention.columns(), rows)}"""


def render(
    info: dict,
    blessed: Optional[bool],
    samples: Dict[str, SplitSample],
    scores: Dict[str, plots.Scores],
    ood_shares: Dict[str, Optional[float]],
    table: Dict[str, Dict[str, float]],
    figures: List[Tuple[str, str]],
    notes: List[str],
    attention_table: Dict[str, Dict[str, attention.OutcomeShare]],
    blessing_split: str,
    max_images_per_split: int,
) -> str:
    """The whole page; `figures` are (PNG file name, caption) in page order, `notes` say what was not drawn."""
    images = "".join(
        f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
        for name, caption in figures
    )
    notes_html = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    validation_flagged = 100 - float(info.get("ood", {}).get("validation_percentile", 100))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Pneumonia model report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} td:first-child{{text-align:left}}
table{{font-size:85%}} th{{max-width:7em;font-weight:normal}} .wide{{overflow-x:auto}}
img{{max-width:100%}} figure{{margin:1em 0}}</style></head><body>
<h1>Pneumonia model report</h1>
{model_card(info, blessed, samples, table, blessing_split)}
<h2>Metrics per slice (TFMA)</h2>
<p>Accuracy, precision, sensitivity, specificity and F1 are at 0.5 unless marked "at tuned". AUC, accuracy,
sensitivity and specificity show their 95% confidence interval in brackets (the run's kind: analytic by default,
or TFMA's bootstrap); where the
slice holds fewer than {tfma_metrics.MIN_CASES_FOR_INTERVAL} cases behind a figure, its case count is shown
instead. One table per split: the whole split, its sources, and <code>patient_in_train</code> (1: the patient
ID also has images in train; 0: unseen patients); the crossings with label and pathogen are collapsed below
it. A metric a slice cannot define shows "-" (AUC, AUC-PR and F1 on a one-class slice; precision and
calibration without PNEUMONIA). The pooled slices mix every evaluated split and are no one split's figures.</p>
{slice_table(table, blessing_split)}
<h2>Scored images behind the figures</h2>
<p>Up to {max_images_per_split} images per split, scored by the exported <code>serving_default</code>
signature at the tuned threshold {float(info["value"]):.4f}. <i>Flagged OOD</i>: the share the model's
out-of-distribution guard marks as unlike its training images
(its threshold flags {validation_flagged:g}% of validation images by construction).</p>
{scored_table(scores, ood_shares, float(info["value"]))}
{attention_section(attention_table)}
<h2>Figures</h2>
{images}
<ul>{notes_html}</ul>
</body></html>
"""
