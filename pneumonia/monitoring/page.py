"""The monitor's HTML page: one self-contained file (figures inline), in the evaluation report's style."""

import base64
import html
import io
from typing import List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
import numpy as np  # noqa: E402

from components.report.plots import DPI  # noqa: E402
from pneumonia.monitoring.reference import Calibration, Reference  # noqa: E402
from pneumonia.monitoring.settings import Limits  # noqa: E402
from pneumonia.monitoring.windows import Window  # noqa: E402

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:auto} table{border-collapse:collapse;font-size:85%}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} td:first-child{text-align:left}
th{font-weight:normal} img{max-width:100%} figure{margin:1em 0} .alert{color:#a00}"""


def _figure(draw, title: str, height: float = 3.0) -> str:
    figure, axes = plt.subplots(figsize=(9, height))
    draw(axes)
    axes.set_title(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{encoded}" alt="{html.escape(title)}"></figure>'


def _names(axes, windows: List[Window]) -> None:
    axes.set_xticks(range(len(windows)), [w.name for w in windows], rotation=30, ha="right", fontsize=7)


def _nan(value: Optional[float]) -> float:
    return np.nan if value is None else value


def reliability(calibration: Calibration) -> str:
    """Validation's reliability curve, when validation has labels."""
    if not calibration.curve:
        return ""

    def draw(axes):
        predicted, observed, counts = zip(*calibration.curve)
        axes.plot([0, 1], [0, 1], "k:", linewidth=0.8, label="perfect")
        axes.plot(predicted, observed, "o-", label=f"as served (ECE {calibration.ece:.3f})")
        if calibration.platt is not None:
            axes.plot(calibration.apply(np.array(predicted)), observed, "s--", label="after Platt scaling (bin means)")
        axes.set(xlabel="mean predicted probability", ylabel="observed pneumonia rate", xlim=(0, 1), ylim=(0, 1))
        axes.legend(fontsize=7)

    return _figure(draw, "Calibration on validation", 3.5)


def figures(windows: List[Window], reference: Reference, probabilities: List[np.ndarray], limits: Limits) -> str:
    def volume(axes):
        axes.bar(range(len(windows)), [w.images for w in windows])
        axes.set_ylabel("logged images")
        _names(axes, windows)

    def ood(axes):
        axes.plot([_nan(w.ood_share) for w in windows], "o-")
        axes.axhline(limits.max_ood_share, color="r", linestyle=":", label="alert above")
        axes.set(ylabel="share flagged OOD", ylim=(0, 1))
        axes.legend(fontsize=7)
        _names(axes, windows)

    def scores(axes):
        axes.boxplot([reference.probability, *probabilities], labels=["validation", *[w.name for w in windows]])
        axes.set(ylabel="pneumonia probability", ylim=(0, 1))
        axes.tick_params(axis="x", labelrotation=30, labelsize=7)

    def performance(axes):
        for key, colour in (("sensitivity", "C0"), ("specificity", "C1")):
            estimated = [_nan(getattr(w.estimated, key) if w.estimated else None) for w in windows]
            realised = [_nan(getattr(w.realised, key) if w.realised else None) for w in windows]
            axes.plot(estimated, "o-", color=colour, label=f"{key}, estimated (CBPE)")
            axes.plot(realised, "s--", color=colour, label=f"{key}, realised (labels)")
        if limits.sensitivity_floor is not None:
            axes.axhline(limits.sensitivity_floor, color="r", linestyle=":", label="sensitivity floor")
        axes.set(ylabel="at the served threshold", ylim=(0, 1.02))
        axes.legend(fontsize=7, ncol=2)
        _names(axes, windows)

    def drift(axes):
        features = sorted({f.feature for w in windows for f in w.features})
        for feature in features:
            axes.plot(
                [_nan(next((f.divergence for f in w.features if f.feature == feature), None)) for w in windows],
                "o-",
                label=feature,
                linewidth=0.8,
            )
        axes.plot([_nan(w.score and w.score.js_distance) for w in windows], "k^--", label="score (JS distance)")
        axes.set(ylabel="divergence from validation", ylim=(0, 1.02))
        axes.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        _names(axes, windows)

    return "".join(
        [
            _figure(volume, "Volume per window"),
            _figure(ood, "Out-of-distribution share"),
            _figure(scores, "Score distribution: validation, then each window", 3.5),
            _figure(performance, "Estimated vs realised performance"),
            _figure(drift, "Drift: image statistics (TFDV Jensen-Shannon divergence) and scores"),
        ]
    )


def number(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None or np.isnan(value) else f"{value:.{digits}f}"


def _row(window: Window) -> str:
    est, real, score = window.estimated, window.realised, window.score
    drifted = ", ".join(f.feature for f in window.features if f.drifted) or "-"
    prevalence = window.prevalence
    cells = [
        window.name,
        str(window.images),
        number(window.ood_share, 2),
        number(window.class_shares.get("PNEUMONIA", 0.0), 2),
        f"{score.ks_statistic:.3f} ({score.ks_pvalue:.2g})" if score else "-",
        number(score and score.js_distance),
        drifted,
        f"{prevalence[0]:.2f} [{prevalence[1]:.2f}, {prevalence[2]:.2f}]" if prevalence else "-",
        *(number(est and getattr(est, key)) for key in ("accuracy", "sensitivity", "specificity")),
        *(number(real and getattr(real, key)) for key in ("sensitivity", "specificity")),
        str(real.images) if real else "0",
    ]
    marker = ' class="alert"' if window.alerts else ""
    return f"<tr{marker}>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells) + "</tr>"


HEADER = (
    "window, images, OOD share, PNEUMONIA share, KS D (p), score JS distance, drifted statistics, prevalence [95%], "
    "est. accuracy, est. sensitivity, est. specificity, realised sensitivity, realised specificity, labelled"
).split(", ")


def calibration_note(calibration: Calibration, reference: Reference) -> str:
    if calibration.ece is None:
        return "validation carries no labels: calibration unchecked, the probabilities are taken as they are"
    note = f"validation ECE {calibration.ece:.3f} ({reference.probability.size} images, 10 bins)"
    if calibration.platt is None:
        return note + ": calibrated, the probabilities are used as served"
    return note + (
        f": not calibrated; Platt scaling fitted on validation is applied here before the estimates (cross-fitted "
        f"ECE {calibration.ece_after:.3f}). The lasting fix is that map inside the exported model"
    )


def render(
    model: str,
    reference: Reference,
    calibration: Calibration,
    windows: List[Window],
    probabilities: List[np.ndarray],
    limits: Limits,
    notes: List[str],
) -> str:
    alerts = [alert for window in windows for alert in window.alerts]
    alert_items = "".join(f"<li>{html.escape(a['window'])}: {html.escape(a['reason'])}</li>" for a in alerts)
    rows = "".join(_row(window) for window in windows)
    head = "".join(f"<th>{html.escape(title)}</th>" for title in HEADER)
    note_items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Monitor: {html.escape(model)} version {reference.version}</title>
<style>{STYLE}</style></head><body>
<h1>Monitor: {html.escape(model)} version {reference.version}</h1>
<p>Threshold {reference.threshold:.4f} ({html.escape(reference.policy)}); reference: the validation split of
{html.escape(reference.source)} ({reference.probability.size} images).
{html.escape(calibration_note(calibration, reference))}.</p>
<h2>Alerts</h2><ul>{alert_items or "<li>none</li>"}</ul>
<h2>Windows</h2><table><tr>{head}</tr>{rows}</table>
<p>Estimates (CBPE) assume the calibrated probabilities still hold on the window; under a domain shift they are
optimistic. Realised figures use the labels given with --labels. Windows under 10 images get no tests.</p>
{figures(windows, reference, probabilities, limits)}
{reliability(calibration)}
<ul>{note_items}</ul>
</body></html>
"""
