"""Issue 12's tables from the runs' own artifacts: one ablation row per remedy, and the targets of the model
the rule written before the runs picks (docs/RESULTS.md, "Models that look at the lungs").

The rule: among the candidates, the lowest validation Brier score (TFMA, slice split=eval); within
`BRIER_TIE` of it, the lower validation border-attention share. Test and external figures choose nothing.
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from components import metrics_vocabulary as vocabulary
from components.report import scoring as report_scoring
from components.report import tfma_metrics
from components.report.attention import BORDER_AREA
from pipeline.config import RunConfig
from pneumonia.analysis.tables import format_number
from pneumonia.runs import evaluation, scoring
from pneumonia.runs.store import latest_evaluations

BRIER_TIE = 0.002
VALIDATION, TEST, EXTERNAL = "eval", "test", "external"


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    at_least: bool  # True: the figure must reach `bound`; False: it must stay below it
    bound: float


def targets() -> Tuple[Target, ...]:
    return (
        Target("test AUC", True, 0.97),
        Target("test accuracy at the validation threshold", True, 0.90),
        Target("test sensitivity at the validation threshold", True, 0.95),
        Target("external AUC", True, 0.80),
        Target("border share on test false positives", False, BORDER_AREA),
    )


def find_slice(table: Dict[str, Dict[str, float]], **parts: str) -> Dict[str, float]:
    """The row of the slice made of exactly these features (e.g. split=test), {} when TFMA wrote none."""
    return next((row for name, row in table.items() if vocabulary.slice_parts(name) == parts), {})


def validation_brier(item) -> float:
    return find_slice(evaluation.slice_metrics(item.evaluation), split=VALIDATION).get(vocabulary.BRIER, math.nan)


def validation_border_share(item) -> float:
    outcome = item.attention.get(VALIDATION, {}).get("all")
    return outcome.mean if outcome else math.nan


def pick(figures: Sequence[Tuple[float, float]]) -> Tuple[int, int]:
    """(index of the pick, how many models tied on Brier) among (validation Brier, validation border share)
    pairs: the lowest Brier; within BRIER_TIE of it, the lower border share (NaN Brier: not a candidate)."""
    finite = [brier for brier, _ in figures if not math.isnan(brier)]
    if not finite:
        raise ValueError("no candidate has a validation Brier score (slice split=eval)")
    tied = [index for index, (brier, _) in enumerate(figures) if brier <= min(finite) + BRIER_TIE]
    border = {index: figures[index][1] for index in tied}
    return min(tied, key=lambda index: (math.isnan(border[index]), border[index])), len(tied)


def choose(candidates: Sequence) -> Tuple[object, str]:
    """(the model the rule picks, why it won)."""
    figures = [(validation_brier(item), validation_border_share(item)) for item in candidates]
    index, tied = pick(figures)
    brier, border = figures[index]
    why = (
        f"validation Brier {brier:.4f}, the lowest"
        if tied == 1
        else f"validation border share {border:.3f}, the lowest of the {tied} models within {BRIER_TIE} of the "
        f"lowest validation Brier"
    )
    return candidates[index], why


def false_positive_images(item, split: str = TEST) -> List[bytes]:
    """The encoded images the model calls PNEUMONIA at its threshold although they are NORMAL."""
    sample, outputs = scoring.scored_outputs(item.examples_uri, [split], item.model_uri)[split]
    wrong = (np.array(sample.labels) == 0) & (outputs["probability"] >= outputs["threshold"])
    return [image for image, flagged in zip(sample.images, wrong) if flagged]


def border_shares_on(item, *image_sets: List[bytes]) -> List[float]:
    """The model's mean Grad-CAM border share on each set of images (explaining the class it predicts), the
    Keras model rebuilt once for all sets."""
    model, layer = report_scoring.keras_model(item.model_uri, item.model)
    threshold = float(item.model["value"])
    return [
        float(np.nanmean(report_scoring.border_shares(model, layer, item.image_size, images, threshold)))
        if images
        else math.nan
        for images in image_sets
    ]


def figures(item) -> Dict[str, str]:
    """What an ablation row shows of one model, each metric with its TFMA 95% interval where it has one."""
    table = evaluation.slice_metrics(item.evaluation)
    test, external = find_slice(table, split=TEST), find_slice(table, split=EXTERNAL)
    cell = tfma_metrics.interval_cell
    accuracy, sensitivity, specificity = (
        vocabulary.at_threshold(key) for key in (vocabulary.ACCURACY, vocabulary.RECALL, vocabulary.SPECIFICITY)
    )
    shown = {
        "val Brier": format_number(find_slice(table, split=VALIDATION).get(vocabulary.BRIER), 4),
        "test AUC": cell(test, vocabulary.AUC),
        "test acc@thr": cell(test, accuracy),
        "test sens@thr": cell(test, sensitivity),
        "test spec@thr": cell(test, specificity),
        "external AUC": cell(external, vocabulary.AUC),
    }
    for source in ("rsna", "ieee8023"):
        row = find_slice(table, split=EXTERNAL, source=source)
        shown[f"{source} sens@thr"] = cell(row, sensitivity)
        shown[f"{source} spec@thr"] = cell(row, specificity)
    outcomes = item.attention.get(TEST, {})
    for outcome in ("all", "FP"):
        share = outcomes.get(outcome)
        shown[f"border test {outcome}"] = f"{format_number(share.mean)} ({share.images})" if share else "-"
    return shown


def ablation_rows(rows: Sequence[Tuple[str, object]]) -> List[List[str]]:
    """Header plus one row per (label, model); the first is the baseline, whose test false positives every row
    is explained on again (`border on baseline FPs`), so the border column compares the same images."""
    baseline_fps = false_positive_images(rows[0][1])
    table = [
        [
            label,
            item.architecture,
            {
                **figures(item),
                "border on baseline FPs": (
                    f"{format_number(border_shares_on(item, baseline_fps)[0])} ({len(baseline_fps)})"
                ),
            },
        ]
        for label, item in rows
    ]
    header = ["row", "architecture"] + list(table[0][2])
    return [header] + [[label, architecture] + list(shown.values()) for label, architecture, shown in table]


def target_rows(candidates: Sequence, baseline) -> List[List[str]]:
    """The pick of `choose` against each target, with its margin; the border target also against `baseline`
    on the baseline's own test false positives."""
    chosen, why = choose(candidates)
    table = evaluation.slice_metrics(chosen.evaluation)
    test, external = find_slice(table, split=TEST), find_slice(table, split=EXTERNAL)
    baseline_fps = false_positive_images(baseline)
    own_on_own, own = border_shares_on(chosen, false_positive_images(chosen), baseline_fps)
    [theirs] = border_shares_on(baseline, baseline_fps)
    achieved = {
        "test AUC": test.get(vocabulary.AUC),
        "test accuracy at the validation threshold": test.get(vocabulary.at_threshold(vocabulary.ACCURACY)),
        "test sensitivity at the validation threshold": test.get(vocabulary.at_threshold(vocabulary.RECALL)),
        "external AUC": external.get(vocabulary.AUC),
        "border share on test false positives": own_on_own,
    }
    rows = [["target", "bound", f"{chosen.architecture} ({why})", "met", "margin"]]
    for target in targets():
        value = achieved[target.name]
        met = (
            value is not None
            and not math.isnan(value)
            and (value >= target.bound if target.at_least else value < target.bound)
        )
        rows.append(
            [
                target.name,
                f"{'>=' if target.at_least else '<'} {target.bound:.4g}",
                format_number(value),
                "yes" if met else "no",
                signed(value, target.bound),
            ]
        )
    rows.append(
        [
            f"border share on the baseline's {len(baseline_fps)} test false positives",
            f"< {format_number(theirs)} ({baseline.architecture} baseline)",
            format_number(own),
            "yes" if own < theirs else "no",
            signed(own, theirs),
        ]
    )
    return rows


def signed(value: Optional[float], bound: float) -> str:
    """How far `value` is from `bound` (+ above, - below); "-" when undefined."""
    return "-" if value is None or math.isnan(value) or math.isnan(bound) else f"{value - bound:+.3f}"


def labelled_roots(specs: Sequence[str]) -> List[Tuple[str, object]]:
    """`LABEL=ROOT[:ARCHITECTURE]` -> (label, that root's latest evaluated model of the architecture, or its only
    one)."""
    rows = []
    for spec in specs:
        label, _, place = spec.partition("=")
        root, _, architecture = place.partition(":")
        if not label or not root:
            raise ValueError(f"--ablation {spec!r}: expected LABEL=ROOT or LABEL=ROOT:ARCHITECTURE")
        evaluated = {item.architecture: item for item in latest_evaluations(RunConfig(root=root).metadata_path)}
        if not architecture and len(evaluated) > 1:
            raise ValueError(
                f"--ablation {spec!r}: {root} holds {', '.join(sorted(evaluated))}; name one as "
                f"{label}={root}:ARCHITECTURE"
            )
        item = evaluated.get(architecture) if architecture else next(iter(evaluated.values()))
        if item is None:
            raise ValueError(f"--ablation {spec!r}: no evaluated {architecture} under {root}")
        rows.append((label, item))
    return rows


def lungs_rows(metadata_path: str, ablation: Optional[Sequence[str]], baseline: Optional[str]) -> List[List[str]]:
    """The ablation table (`--ablation`, one LABEL=ROOT[:ARCHITECTURE] per row), or else the targets table of
    the model the rule picks under `metadata_path` (`--targets`, against `baseline`)."""
    if ablation:
        return ablation_rows(labelled_roots(ablation))
    if not baseline:
        raise ValueError(
            "--targets needs --baseline LABEL=ROOT[:ARCHITECTURE]: the recipe whose false positives "
            "the border target compares on"
        )
    return target_rows(latest_evaluations(metadata_path), labelled_roots([baseline])[0][1])
