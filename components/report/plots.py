"""The report's figures, one PNG each, drawn with matplotlib's non-interactive backend.

Every curve is computed here from (labels, probabilities) per split, with the trainer's own ROC
points, so the report and the tuned threshold agree on what "sensitivity at t" means.
"""

import dataclasses
from typing import Dict, List, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer.signatures import CLASS_NAMES  # noqa: E402
from trainer.threshold import roc_points  # noqa: E402

DPI = 90


@dataclasses.dataclass(frozen=True)
class Scores:
    """Labels (0/1) and pneumonia probabilities of one split."""

    labels: np.ndarray
    probabilities: np.ndarray

    @property
    def has_both_classes(self) -> bool:
        return 0 < int(self.labels.sum()) < self.labels.size


@dataclasses.dataclass(frozen=True)
class Curves:
    """Operating points for 'positive when probability >= threshold', thresholds descending."""

    thresholds: np.ndarray
    sensitivity: np.ndarray  # recall
    specificity: np.ndarray
    precision: np.ndarray

    @property
    def false_positive_rate(self) -> np.ndarray:
        return 1.0 - self.specificity


def curves(scores: Scores) -> Curves:
    thresholds, sensitivity, specificity = roc_points(scores.labels, scores.probabilities)
    positives, negatives = scores.labels.sum(), scores.labels.size - scores.labels.sum()
    true_positive, false_positive = sensitivity * positives, (1.0 - specificity) * negatives
    precision = true_positive / np.maximum(true_positive + false_positive, 1)
    return Curves(thresholds, sensitivity, specificity, precision)


def roc_auc(scores: Scores) -> float:
    c = curves(scores)
    return float(np.trapz(np.r_[0.0, c.sensitivity], np.r_[0.0, c.false_positive_rate]))


def average_precision(scores: Scores) -> float:
    """Area under the PR curve as a step sum (what scikit-learn calls average precision)."""
    c = curves(scores)
    return float(np.sum(np.diff(np.r_[0.0, c.sensitivity]) * c.precision))


def confusion(scores: Scores, threshold: float) -> np.ndarray:
    """[[TN, FP], [FN, TP]] for 'PNEUMONIA when probability >= threshold'."""
    predicted = (scores.probabilities >= threshold).astype(int)
    return np.array([[np.sum((scores.labels == t) & (predicted == p)) for p in (0, 1)] for t in (0, 1)])


def sensitivity_and_specificity(scores: Scores, threshold: float) -> Tuple[float, float]:
    (true_negative, false_positive), (false_negative, true_positive) = confusion(scores, threshold)
    return (
        float(true_positive / max(true_positive + false_negative, 1)),
        float(true_negative / max(true_negative + false_positive, 1)),
    )


def calibration_bins(scores: Scores, bins: int = 10) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted probability, observed pneumonia rate, count) per non-empty equal-width bin."""
    index = np.minimum((scores.probabilities * bins).astype(int), bins - 1)
    counts = np.bincount(index, minlength=bins)
    predicted = np.bincount(index, weights=scores.probabilities, minlength=bins)
    observed = np.bincount(index, weights=scores.labels.astype(float), minlength=bins)
    used = counts > 0
    return predicted[used] / counts[used], observed[used] / counts[used], counts[used]


def brier_score(scores: Scores) -> float:
    return float(np.mean((scores.probabilities - scores.labels) ** 2))


def expected_calibration_error(scores: Scores, bins: int = 10) -> float:
    predicted, observed, counts = calibration_bins(scores, bins)
    return float(np.sum(counts * np.abs(predicted - observed)) / counts.sum())


def _save(figure, path: str) -> None:
    """Writes through tf.io.gfile, so a report can live in a bucket (Kubeflow) as well as on disk."""
    figure.tight_layout()
    with tf.io.gfile.GFile(path, "wb") as f:
        figure.savefig(f, format="png", dpi=DPI)
    plt.close(figure)


def class_distribution(counts: Dict[Tuple[str, str], Sequence[int]], path: str) -> None:
    """Grouped bars: NORMAL and PNEUMONIA count for each (split, dataset), in the given order."""
    groups = list(counts)
    figure, axes = plt.subplots(figsize=(max(5, 1.3 * len(groups)), 3.5))
    positions = np.arange(len(groups))
    for offset, (index, name) in zip((-0.2, 0.2), enumerate(CLASS_NAMES)):
        values = [counts[group][index] for group in groups]
        bars = axes.bar(positions + offset, values, width=0.4, label=name)
        axes.bar_label(bars, fontsize=7)
    axes.set_xticks(positions, [f"{split}\n{dataset}" for split, dataset in groups])
    axes.set_ylabel("images")
    axes.set_title("Class distribution per split and dataset")
    axes.legend()
    _save(figure, path)


def sample_grid(samples: Dict[str, List[np.ndarray]], path: str) -> None:
    """One row per class of grayscale images [H, W]."""
    columns = max(len(images) for images in samples.values())
    figure, axes = plt.subplots(len(samples), columns, figsize=(1.6 * columns, 1.8 * len(samples)), squeeze=False)
    for row, (name, images) in enumerate(samples.items()):
        for column in range(columns):
            axis = axes[row, column]
            axis.axis("off")
            if column < len(images):
                axis.imshow(images[column], cmap="gray")
        axes[row, 0].set_title(name, loc="left", fontsize=9)
    _save(figure, path)


def roc_and_pr_curves(scores: Dict[str, Scores], path: str) -> None:
    """ROC and precision-recall curves of each split, overlaid."""
    figure, (roc, pr) = plt.subplots(1, 2, figsize=(9, 4))
    for split, split_scores in scores.items():
        if not split_scores.has_both_classes:
            continue
        c = curves(split_scores)
        roc.plot(
            np.r_[0.0, c.false_positive_rate],
            np.r_[0.0, c.sensitivity],
            label=f"{split} (AUC {roc_auc(split_scores):.3f})",
        )
        pr.plot(c.sensitivity, c.precision, label=f"{split} (AP {average_precision(split_scores):.3f})")
    roc.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    roc.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC")
    pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="Precision-recall", ylim=(0, 1.02))
    for axis in (roc, pr):
        axis.legend(fontsize=8)
    _save(figure, path)


def _per_split_axes(count: int, height: float = 3.2):
    figure, axes = plt.subplots(1, count, figsize=(4 * count, height), squeeze=False)
    return figure, axes[0]


def precision_recall_vs_threshold(scores: Dict[str, Scores], threshold: float, path: str) -> None:
    figure, axes = _per_split_axes(len(scores))
    for axis, (split, split_scores) in zip(axes, scores.items()):
        c = curves(split_scores)
        axis.plot(c.thresholds, c.precision, label="precision")
        axis.plot(c.thresholds, c.sensitivity, label="recall")
        axis.axvline(threshold, color="k", linestyle=":", label=f"tuned threshold {threshold:.3f}")
        axis.set(xlabel="threshold", title=split, xlim=(0, 1), ylim=(0, 1.02))
        axis.legend(fontsize=7)
    _save(figure, path)


def youden_vs_threshold(scores: Dict[str, Scores], threshold: float, path: str) -> None:
    """Youden's J = sensitivity + specificity - 1 per threshold, the tuned threshold marked on each split."""
    figure, axes = _per_split_axes(len(scores))
    for axis, (split, split_scores) in zip(axes, scores.items()):
        c = curves(split_scores)
        youden = c.sensitivity + c.specificity - 1.0
        axis.plot(c.thresholds, youden)
        j = sum(sensitivity_and_specificity(split_scores, threshold)) - 1.0
        axis.plot([threshold], [j], "ro", label=f"tuned {threshold:.3f}: J = {j:.3f}")
        axis.set(xlabel="threshold", ylabel="Youden's J", title=split, xlim=(0, 1), ylim=(-0.05, 1.02))
        axis.legend(fontsize=7)
    _save(figure, path)


def confusion_matrices(scores: Dict[str, Scores], threshold: float, path: str) -> None:
    """Rows: splits; columns: at 0.5 and at the tuned threshold."""
    figure, axes = plt.subplots(len(scores), 2, figsize=(6.4, 3 * len(scores)), squeeze=False)
    for row, (split, split_scores) in enumerate(scores.items()):
        for axis, (name, value) in zip(axes[row], (("0.5", 0.5), ("tuned", threshold))):
            matrix = confusion(split_scores, value)
            axis.imshow(matrix, cmap="Blues", vmin=0)
            for (true, predicted), count in np.ndenumerate(matrix):
                axis.text(
                    predicted,
                    true,
                    str(count),
                    ha="center",
                    va="center",
                    color="white" if count > matrix.max() / 2 else "black",
                )
            axis.set_xticks([0, 1], CLASS_NAMES, fontsize=8)
            axis.set_yticks([0, 1], CLASS_NAMES, fontsize=8)
            axis.set(xlabel="predicted", title=f"{split} at {name} ({value:.3f})")
        axes[row, 0].set_ylabel("true")
    _save(figure, path)


def calibration(scores: Dict[str, Scores], path: str) -> None:
    figure, axes = plt.subplots(figsize=(4.5, 4.2))
    axes.plot([0, 1], [0, 1], "k:", linewidth=0.8, label="perfect")
    for split, split_scores in scores.items():
        predicted, observed, _ = calibration_bins(split_scores)
        axes.plot(
            predicted,
            observed,
            "o-",
            label=f"{split} (Brier {brier_score(split_scores):.3f}, "
            f"ECE {expected_calibration_error(split_scores):.3f})",
        )
    axes.set(
        xlabel="mean predicted probability",
        ylabel="observed pneumonia rate",
        title="Calibration",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    axes.legend(fontsize=7)
    _save(figure, path)


@dataclasses.dataclass(frozen=True)
class Explained:
    """One explained image: pixels [H, W], both maps [H, W] in [0, 1], and what the model said."""

    image: np.ndarray
    grad_cam: np.ndarray
    grad_cam_plus_plus: np.ndarray
    true_label: int
    probability: float
    threshold: float
    source: str

    @property
    def caption(self) -> str:
        predicted = CLASS_NAMES[int(self.probability >= self.threshold)]
        return f"true {CLASS_NAMES[self.true_label]}, predicted {predicted}, p={self.probability:.3f}\n{self.source}"


def gradcam_panels(explained: List[Explained], title: str, path: str) -> None:
    """Per image: the image, then heatmap and overlay for Grad-CAM and for Grad-CAM++."""
    figure, axes = plt.subplots(len(explained), 5, figsize=(11, 2.5 * len(explained)), squeeze=False)
    headers = ("image", "Grad-CAM", "Grad-CAM overlay", "Grad-CAM++", "Grad-CAM++ overlay")
    for row, item in enumerate(explained):
        panels = axes[row]
        panels[0].imshow(item.image, cmap="gray")
        panels[0].set_ylabel(item.caption, fontsize=7, rotation=0, ha="right", va="center")
        for offset, heatmap in ((1, item.grad_cam), (3, item.grad_cam_plus_plus)):
            panels[offset].imshow(heatmap, cmap="jet", vmin=0, vmax=1)
            panels[offset + 1].imshow(item.image, cmap="gray")
            panels[offset + 1].imshow(heatmap, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        for column, axis in enumerate(panels):
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(headers[column], fontsize=9)
    figure.suptitle(title)
    _save(figure, path)
