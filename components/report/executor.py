"""Builds the evaluation report: figures, per-slice metrics, Grad-CAM panels and a model card, as HTML.

Inputs are plain folders (examples, model and evaluation artifact URIs, local or in a bucket: files go
through tf.io.gfile), so `pneumonia report` regenerates a run's report with the same code the pipeline
component runs.
"""
import dataclasses
import html
import logging
import os
from collections import Counter
from typing import Dict, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from components import metrics_vocabulary as vocabulary
from components.report import attention, gradcam, plots, tfma_metrics
from serving.repository import serving_model_dir
from trainer import models, signatures, task
from trainer.preprocessing import decode_image
from trainer.signatures import CLASS_NAMES

INDEX = "index.html"
GROUPS = (  # (file stem, title, true label, predicted label)
    ("true_positives", "most confident true positives", 1, 1),
    ("true_negatives", "most confident true negatives", 0, 0),
    ("false_positives", "worst false positives", 0, 1),
    ("false_negatives", "worst false negatives", 1, 0),
)
_FEATURES = {name: tf.io.FixedLenFeature([], tf.string) for name in ("image", "dataset", "source_path")}
_FEATURES["label"] = tf.io.FixedLenFeature([], tf.int64)


@dataclasses.dataclass(frozen=True)
class Settings:
    max_images_per_split: int = 200  # images scored per evaluated split for the curves and Grad-CAM
    explained_per_group: int = 2  # images per Grad-CAM panel (TP, TN, FP, FN)
    samples_per_class: int = 6
    blessing_split: str = "eval"  # the split the Evaluator blesses on (the pipeline passes its BLESSING_SPLIT)


@dataclasses.dataclass
class SplitSample:
    """The first `max_images_per_split` records of one split, and the split's full class counts."""
    serialized: List[bytes] = dataclasses.field(default_factory=list)
    images: List[bytes] = dataclasses.field(default_factory=list)
    labels: List[int] = dataclasses.field(default_factory=list)
    sources: List[str] = dataclasses.field(default_factory=list)
    counts: Counter = dataclasses.field(default_factory=Counter)  # (dataset, label) -> images


class ReportError(Exception):
    """A report input is missing or does not fit the model contract."""


def model_info(model_uri: str) -> dict:
    """The exported model's threshold JSON: value, policy, validation figures, architecture, size, settings."""
    return signatures.read_metadata(serving_model_dir(model_uri))


def read_split(examples_uri: str, split: str, cap: int) -> SplitSample:
    files = sorted(tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*")))
    if not files:
        raise ReportError(f"no records for split {split!r} under {examples_uri}")
    sample = SplitSample()
    for serialized in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
        example = tf.io.parse_single_example(serialized, _FEATURES)
        label = int(example["label"])
        sample.counts[(example["dataset"].numpy().decode(), label)] += 1
        if len(sample.labels) < cap:
            sample.serialized.append(serialized)
            sample.images.append(example["image"].numpy())
            sample.labels.append(label)
            sample.sources.append(f"{example['dataset'].numpy().decode()}:{example['source_path'].numpy().decode()}")
    return sample


def serving_function(model_uri: str):
    """The exported `serving_default` signature, as TFMA and TF Serving see it: load once, score many splits."""
    return tf.saved_model.load(serving_model_dir(model_uri)).signatures["serving_default"]


def score(serve, serialized: List[bytes], batch_size: int = 32) -> Dict[str, np.ndarray]:
    """The numeric outputs of a `serving_function` (probability, threshold, OOD guard) for serialized tf.Examples."""
    batches = [serve(examples=tf.constant(serialized[i:i + batch_size])) for i in range(0, len(serialized), batch_size)]
    if not batches:
        return {"probability": np.zeros(0, np.float32)}
    keys = [key for key, value in batches[0].items() if value.dtype != tf.string]
    return {key: np.concatenate([batch[key].numpy() for batch in batches]) for key in keys}


def predict(serve, serialized: List[bytes], batch_size: int = 32) -> np.ndarray:
    """Pneumonia probabilities of serialized tf.Examples from a `serving_function`."""
    return score(serve, serialized, batch_size)["probability"]


def ood_share(outputs: Dict[str, np.ndarray]) -> Optional[float]:
    """The share of images the model's OOD guard flags; None for a model exported without a guard."""
    if "in_distribution" not in outputs:
        return None
    return float(np.mean(~outputs["in_distribution"])) if outputs["in_distribution"].size else float("nan")


def keras_model(model_uri: str, info: dict) -> Tuple[keras.Model, str]:
    """The trained Keras model (rebuilt from the registry plus its weights) and its Grad-CAM layer."""
    weights = task.keras_weights_path(serving_model_dir(model_uri))
    if not tf.io.gfile.exists(weights):
        raise ReportError(f"no Keras weights at {weights}: the Trainer writes them for Grad-CAM")
    architecture = info["architecture"]
    model = models.build(architecture, info["image_size"], **info.get("model_config", {}))
    model.load_weights(weights)
    return model, models.REGISTRY[architecture].gradcam_layer


def select(scores: plots.Scores, threshold: float, true_label: int, predicted_label: int, count: int) -> np.ndarray:
    """Indices of the `count` most confident predictions of one kind (the worst, for errors)."""
    predicted = (scores.probabilities >= threshold).astype(int)
    chosen = np.flatnonzero((scores.labels == true_label) & (predicted == predicted_label))
    # Confidence in the predicted class: high probability for PNEUMONIA, low for NORMAL.
    confidence = scores.probabilities[chosen] if predicted_label == 1 else -scores.probabilities[chosen]
    return chosen[np.argsort(-confidence, kind="stable")[:count]]


def explain(model: keras.Model, layer: str, image_size: int, sample: SplitSample, scores: plots.Scores,
            indices: np.ndarray, threshold: float) -> List[plots.Explained]:
    pixels = np.stack([decode_image(sample.images[i], image_size).numpy() for i in indices])
    cams, cams_plus_plus, probabilities = gradcam.heatmaps(model, layer, pixels, threshold)
    if not np.allclose(probabilities, scores.probabilities[indices], atol=1e-4):
        raise ReportError("the Keras weights do not reproduce the exported model's probabilities "
                          f"({probabilities} vs {scores.probabilities[indices]}): they belong to another model")
    return [plots.Explained(pixels[n, :, :, 0], cams[n], cams_plus_plus[n], int(scores.labels[i]),
                            float(scores.probabilities[i]), threshold, sample.sources[i])
            for n, i in enumerate(indices)]


def border_attention(model: keras.Model, layer: str, image_size: int, sample: SplitSample, scores: plots.Scores,
                     threshold: float, batch_size: int = 32) -> Dict[str, attention.OutcomeShare]:
    """The Grad-CAM border share of every scored image of a split, averaged per outcome at the threshold."""
    shares = border_shares(model, layer, image_size, sample.images, threshold, batch_size)
    return attention.by_outcome(shares, scores.labels, scores.probabilities, threshold)


def border_shares(model: keras.Model, layer: str, image_size: int, images: List[bytes], threshold: float,
                  batch_size: int = 32) -> np.ndarray:
    """The Grad-CAM border share of each encoded image (explaining the class predicted at `threshold`)."""
    shares = [np.empty(0)]
    for start in range(0, len(images), batch_size):
        pixels = np.stack([decode_image(image, image_size).numpy() for image in images[start:start + batch_size]])
        cams, _, _ = gradcam.heatmaps(model, layer, pixels, threshold)
        shares.append(attention.border_share(cams))
    return np.concatenate(shares)


def sample_images(sample: SplitSample, image_size: int, per_class: int) -> Dict[str, List[np.ndarray]]:
    grid: Dict[str, List[np.ndarray]] = {name: [] for name in CLASS_NAMES}
    for image, label in zip(sample.images, sample.labels):
        if len(grid[CLASS_NAMES[label]]) < per_class:
            grid[CLASS_NAMES[label]].append(decode_image(image, image_size).numpy()[:, :, 0])
    return {name: images for name, images in grid.items() if images}


def generate(examples_uri: str, split_names: List[str], model_uri: str, evaluation_uri: str, out_dir: str,
             blessed: Optional[bool] = None, settings: Settings = Settings()) -> str:
    """Writes index.html and its PNGs into out_dir; returns the index path."""
    tf.io.gfile.makedirs(out_dir)
    info = model_info(model_uri)
    threshold, image_size = float(info["value"]), int(info["image_size"])
    splits = vocabulary.ordered_splits(split_names, settings.blessing_split)
    samples = {split: read_split(examples_uri, split, settings.max_images_per_split) for split in splits}
    evaluated = [split for split in splits if split != vocabulary.TRAIN_SPLIT]
    serve = serving_function(model_uri)
    outputs = {split: score(serve, samples[split].serialized) for split in evaluated}
    scores = {split: plots.Scores(np.array(samples[split].labels), outputs[split]["probability"])
              for split in evaluated}
    ood_shares = {split: ood_share(outputs[split]) for split in evaluated}
    figures: List[Tuple[str, str]] = []  # (file name, caption), in page order

    def figure(name: str, caption: str, draw, *args) -> None:
        draw(*args, os.path.join(out_dir, name))
        figures.append((name, caption))

    counts = {(split, dataset): (sample.counts[(dataset, 0)], sample.counts[(dataset, 1)])
              for split, sample in samples.items() for dataset in sorted({d for d, _ in sample.counts})}
    figure("class_distribution.png", "Class distribution per split and dataset (all records)",
           plots.class_distribution, counts)
    figure("samples.png", f"Sample images per class ({splits[0]} split)", plots.sample_grid,
           sample_images(samples[splits[0]], image_size, settings.samples_per_class))
    reported = [split for split in evaluated if split != settings.blessing_split] or evaluated
    figure("roc_pr.png", "ROC and precision-recall curves", plots.roc_and_pr_curves,
           {split: scores[split] for split in reported})
    figure("precision_recall_threshold.png", "Precision and recall vs threshold",
           plots.precision_recall_vs_threshold, scores, threshold)
    figure("youden.png", f"Youden's J vs threshold; the tuned threshold is marked ({info.get('policy')} on "
           f"{settings.blessing_split})", plots.youden_vs_threshold, scores, threshold)
    figure("confusion.png", "Confusion matrices at 0.5 and at the tuned threshold", plots.confusion_matrices,
           scores, threshold)
    figure("calibration.png", "Calibration (reliability) per split", plots.calibration, scores)

    gradcam_notes: List[str] = []
    attention_table: Dict[str, Dict[str, attention.OutcomeShare]] = {}
    try:
        model, layer = keras_model(model_uri, info)
    except ReportError as error:
        logging.warning("Grad-CAM skipped: %s", error)
        gradcam_notes.append(f"Grad-CAM not drawn: {error}")
    else:
        for split in reported:
            for stem, title, true_label, predicted_label in GROUPS:
                indices = select(scores[split], threshold, true_label, predicted_label, settings.explained_per_group)
                if indices.size == 0:
                    gradcam_notes.append(f"{split}: nothing to show for {title} among "
                                         f"{scores[split].labels.size} scored images")
                    continue
                explained = explain(model, layer, image_size, samples[split], scores[split], indices, threshold)
                figure(f"gradcam_{split}_{stem}.png", f"{split}: {title} (layer {layer})", plots.gradcam_panels,
                       explained, f"{split}: {title}")
        for split in evaluated:  # validation too: where the model looks may choose a model, test may not
            attention_table[split] = border_attention(model, layer, image_size, samples[split], scores[split],
                                                      threshold)
        attention.write(os.path.join(out_dir, attention.ATTENTION_FILE), attention_table)

    page = render(info, blessed, samples, scores, ood_shares, tfma_metrics.slice_metrics(evaluation_uri), figures,
                  gradcam_notes, settings, attention_table)
    index = os.path.join(out_dir, INDEX)
    with tf.io.gfile.GFile(index, "w") as f:
        f.write(page)
    return index


def _cell(value: Optional[float], key: str = "") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "<td>-</td>"
    return f"<td>{value:.0f}</td>" if key == vocabulary.EXAMPLE_COUNT else f"<td>{value:.3f}</td>"


def _table(header: List[str], rows: List[str]) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for title in header)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def slice_table(table: Dict[str, Dict[str, float]], blessing_split: str) -> str:
    """TFMA's numbers per slice, one table per split (the whole split first, then its sources and seen/unseen
    patients), its label and pathogen crossings collapsed below it, and the slices pooled over splits last.
    A metric the slice cannot define shows "-"."""
    keys = [key for key in vocabulary.METRIC_TITLES if any(key in row for row in table.values())]
    header = ["slice"] + [vocabulary.METRIC_TITLES[key] for key in keys]

    def rows(names: List[str], shown) -> str:
        lines = []
        for name in names:
            row, undefined = table[name], vocabulary.undefined_metrics(table[name])
            cells = "".join("<td>-</td>" if key in undefined else
                            f"<td>{html.escape(tfma_metrics.interval_cell(row, key))}</td>"
                            if tfma_metrics.has_interval(key) else _cell(row.get(key), key)
                            for key in keys)
            lines.append(f"<tr><td>{html.escape(shown(name))}</td>{cells}</tr>")
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
            sections.append(f"<details><summary>{html.escape(split)} by label and pathogen ({len(crossed)} slices)"
                            f"</summary>{rows(crossed, within)}</details>")
    pooled = sorted(by_split.get("", []), key=lambda n: (n != vocabulary.OVERALL, n))
    if pooled:
        sections.append(f"<details><summary>pooled over every evaluated split ({len(pooled)} slices; no one "
                        f"split's figures)</summary>{rows(pooled, pooled_name)}</details>")
    return "\n".join(sections)


def scored_table(scores: Dict[str, plots.Scores], ood_shares: Dict[str, Optional[float]], threshold: float) -> str:
    """What the report's own figures rest on: the scored images of each split, and the share the model's
    out-of-distribution guard flags."""
    rows = []
    for split, split_scores in scores.items():
        ranks = split_scores.has_both_classes
        sensitivity, specificity = plots.sensitivity_and_specificity(split_scores, threshold)
        values = [float(split_scores.labels.size), plots.roc_auc(split_scores) if ranks else None,
                  plots.average_precision(split_scores) if ranks else None, sensitivity, specificity,
                  plots.brier_score(split_scores), plots.expected_calibration_error(split_scores), ood_shares[split]]
        rows.append(f"<tr><td>{html.escape(split)}</td>{_cell(values[0], vocabulary.EXAMPLE_COUNT)}"
                    + "".join(_cell(v) for v in values[1:]) + "</tr>")
    return _table(["split", "scored images", "AUC", "AUC-PR (AP)", "sensitivity at tuned", "specificity at tuned",
                   "Brier", "ECE", "flagged OOD"], rows)


def model_card(info: dict, blessed: Optional[bool], samples: Dict[str, SplitSample],
               table: Dict[str, Dict[str, float]], blessing_split: str) -> str:
    training = samples.get(vocabulary.TRAIN_SPLIT)
    trained_on = (", ".join(f"{dataset}: {training.counts[(dataset, 0)]} NORMAL / {training.counts[(dataset, 1)]} "
                            f"PNEUMONIA" for dataset in sorted({d for d, _ in training.counts}))
                  if training else "the examples artifact holds no train split")
    auc_lines = "".join(f"<li>{html.escape(name)}: AUC {row[vocabulary.AUC]:.3f}</li>"
                        for name, row in sorted(table.items())
                        if vocabulary.is_split_slice(name) and vocabulary.AUC in row)
    policy = info.get("policy", "?")
    # A ThresholdCalibrator's policy names where it chose ("youden on the calibration split").
    where = "" if " on " in str(policy) else " on the validation split"
    return f"""
<h2>Model card</h2>
<p><b>Model:</b> {html.escape(str(info.get('architecture')))} at {info.get('image_size')} px;
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
<p><b>Threshold:</b> {float(info['value']):.4f}, chosen by <code>{html.escape(str(policy))}</code>{where}
({info.get('examples', '?')} images): sensitivity there
{float(info.get('sensitivity', float('nan'))):.3f}, specificity {float(info.get('specificity', float('nan'))):.3f}.
Predictions at or above it are PNEUMONIA.</p>
"""


def attention_section(table: Dict[str, Dict[str, attention.OutcomeShare]]) -> str:
    """The border-attention table: where Grad-CAM looks, per split and outcome."""
    if not table:
        return ""
    rows = [f"<tr><td>{html.escape(split)}</td>" + "".join(
        f"<td>{'—' if share.mean != share.mean else f'{share.mean:.3f}'} ({share.images})</td>"
        for share in (outcomes[name] for name in attention.columns())) + "</tr>" for split, outcomes in table.items()]
    return f"""<h2>Where the model looks: border attention</h2>
<p>Share of each image's Grad-CAM mass (the predicted class at the tuned threshold) that falls in the outer
{attention.BORDER_BAND:.1%} of each side, where film edges, collimation borders and markers lie: a band of
{attention.BORDER_AREA:.2%} of the area, so an even map scores {attention.BORDER_AREA:.4f} and a model that reads
the lungs scores well below it. Mean per outcome at the tuned threshold over the scored images (their number in
brackets).</p>
{_table(["split"] + attention.columns(), rows)}"""


def render(info: dict, blessed: Optional[bool], samples: Dict[str, SplitSample], scores: Dict[str, plots.Scores],
           ood_shares: Dict[str, Optional[float]], table: Dict[str, Dict[str, float]],
           figures: List[Tuple[str, str]], notes: List[str], settings: Settings,
           attention_table: Dict[str, Dict[str, attention.OutcomeShare]]) -> str:
    images = "".join(f'<figure><img src="{html.escape(name)}" alt="{html.escape(caption)}">'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>" for name, caption in figures)
    notes_html = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    validation_flagged = 100 - float(info.get("ood", {}).get("validation_percentile", 100))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Pneumonia model report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}} td:first-child{{text-align:left}}
table{{font-size:85%}} th{{max-width:7em;font-weight:normal}} .wide{{overflow-x:auto}}
img{{max-width:100%}} figure{{margin:1em 0}}</style></head><body>
<h1>Pneumonia model report</h1>
{model_card(info, blessed, samples, table, settings.blessing_split)}
<h2>Metrics per slice (TFMA)</h2>
<p>Accuracy, precision, sensitivity, specificity and F1 are at 0.5 unless marked "at tuned". AUC, accuracy,
sensitivity and specificity show TFMA's 95% confidence interval (Poisson bootstrap) in brackets; where the
slice holds fewer than {tfma_metrics.MIN_CASES_FOR_INTERVAL} cases behind a figure, its case count is shown instead. One table per
split: the whole split, its sources, and <code>patient_in_train</code> (1: the patient ID also has images in
train; 0: unseen patients); the crossings with label and pathogen are collapsed below it. A metric a slice
cannot define shows "-" (AUC, AUC-PR and F1 on a one-class slice; precision and calibration without
PNEUMONIA). The pooled slices mix every evaluated split and are no one split's figures.</p>
{slice_table(table, settings.blessing_split)}
<h2>Scored images behind the figures</h2>
<p>Up to {settings.max_images_per_split} images per split, scored by the exported <code>serving_default</code>
signature at the tuned threshold {float(info['value']):.4f}. <i>Flagged OOD</i>: the share the model's
out-of-distribution guard marks as unlike its training images
(its threshold flags {validation_flagged:g}% of validation images by construction).</p>
{scored_table(scores, ood_shares, float(info['value']))}
{attention_section(attention_table)}
<h2>Figures</h2>
{images}
<ul>{notes_html}</ul>
</body></html>
"""
