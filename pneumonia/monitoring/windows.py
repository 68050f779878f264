"""The logged images cut into windows, each measured against the reference, and the alerts each raises."""

import dataclasses
import time
from typing import Dict, List, Optional, Tuple, Union

import pandas as pd

from pneumonia.monitoring import estimates
from pneumonia.monitoring.drift import FeatureDrift, ImageDrift, ScoreDrift, score_drift
from pneumonia.monitoring.logs import MonitorError
from pneumonia.monitoring.reference import Calibration, Reference
from pneumonia.monitoring.settings import Limits
from serving import image_stats

MIN_IMAGES = 10  # a window with fewer images is counted, not tested for drift nor estimated
PERIODS = {"hour": 3600, "day": 86400}
POSITIVE = "PNEUMONIA"


@dataclasses.dataclass
class Window:
    name: str
    start: int  # first and last answer time, seconds since the epoch
    end: int
    requests: int
    images: int
    ood_share: Optional[float]
    class_shares: Dict[str, float]
    score: Optional[ScoreDrift] = None
    features: List[FeatureDrift] = dataclasses.field(default_factory=list)
    prevalence: Optional[Tuple[float, float, float]] = None  # estimate, 95% interval
    estimated: Optional[estimates.Performance] = None
    realised: Optional[estimates.Performance] = None
    alerts: List[Dict[str, str]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_window(text: str) -> Union[str, int]:
    """`hour`, `day` or a number of requests."""
    if text in PERIODS:
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise MonitorError(f"--window {text!r}: use hour, day or a number of requests (e.g. 500)")


def _name(window: Union[str, int], group: pd.DataFrame, first_request: int) -> str:
    if window == "day":
        return time.strftime("%Y-%m-%d", time.gmtime(int(group.time.min())))
    if window == "hour":
        return time.strftime("%Y-%m-%dT%H:00Z", time.gmtime(int(group.time.min())))
    return f"requests {first_request + 1}-{first_request + group.request.nunique()}"


def split(records: pd.DataFrame, window: Union[str, int]) -> List[Tuple[str, pd.DataFrame]]:
    """(name, its images) per window, in time order; empty windows (hours without traffic) do not appear."""
    order = pd.factorize(records.request)[0]  # requests numbered in answer order
    keys = records.time.to_numpy() // PERIODS[window] if isinstance(window, str) else order // window
    groups = []
    for _, group in records.groupby(keys, sort=True):
        groups.append((_name(window, group, int(order[group.index[0]])), group))
    return groups


def _ood_share(group: pd.DataFrame) -> Optional[float]:
    flags = group.in_distribution.dropna()
    return float(1.0 - flags.astype(bool).mean()) if len(flags) else None


def measure(
    name: str,
    group: pd.DataFrame,
    reference: Reference,
    calibration: Calibration,
    image_drift: ImageDrift,
    labels: Optional[pd.Series],
    seed: int = 0,
    estimate: bool = True,
) -> Window:
    """One window's figures; drift tests and (unless `estimate` is off) estimates only from MIN_IMAGES images on."""
    window = Window(
        name,
        int(group.time.min()),
        int(group.time.max()),
        int(group.request.nunique()),
        len(group),
        _ood_share(group),
        {str(label): float(share) for label, share in group.label.value_counts(normalize=True).items()},
    )
    positive = (group.label == POSITIVE).to_numpy()
    if labels is not None:
        known = group.request_id.map(labels)
        if known.notna().any():
            window.realised = estimates.realised_performance(known.dropna().to_numpy(), positive[known.notna()])
    if len(group) < MIN_IMAGES:
        return window
    probability = group.probability.to_numpy(dtype=float)
    calibrated = calibration.apply(probability)
    window.score = score_drift(probability, reference.probability)
    window.features = image_drift.check(group[list(image_stats.FEATURES)].astype(float))
    if not estimate:
        return window
    window.prevalence = estimates.prevalence(calibrated, calibration.prior, seed)
    window.estimated = estimates.expected_performance(calibrated, positive)
    return window


def alerts(window: Window, limits: Limits) -> List[Dict[str, str]]:
    """What is wrong with the window, one line each."""
    found = []

    def alert(kind: str, reason: str) -> None:
        found.append({"window": window.name, "kind": kind, "reason": reason})

    drifted = [feature for feature in window.features if feature.drifted]
    if drifted:
        listed = ", ".join(f"{f.feature} {f.divergence:.2f} > {f.threshold:g}" for f in drifted)
        alert("image_drift", f"image statistics drifted from validation (Jensen-Shannon divergence): {listed}")
    score = window.score
    if score and score.ks_pvalue < limits.alpha and score.js_distance >= limits.js_distance:
        alert(
            "score_drift",
            f"scores drifted from validation: Kolmogorov-Smirnov D = {score.ks_statistic:.3f} "
            f"(p = {score.ks_pvalue:.2g} < {limits.alpha:g}), Jensen-Shannon distance {score.js_distance:.3f}",
        )
    if window.ood_share is not None and window.ood_share > limits.max_ood_share:
        alert(
            "ood_share",
            f"{window.ood_share:.0%} of {window.images} images flagged out of distribution "
            f"(limit {limits.max_ood_share:.0%})",
        )
    floor = limits.sensitivity_floor
    for kind, performance in (("estimated_sensitivity", window.estimated), ("realised_sensitivity", window.realised)):
        value = performance.sensitivity if performance else None
        if floor is not None and value is not None and value < floor:
            alert(kind, f"{kind.replace('_', ' ')} {value:.3f} below the site's floor {floor:g}")
    return found


def analyse(
    records: pd.DataFrame,
    window: Union[str, int],
    reference: Reference,
    calibration: Calibration,
    image_drift: ImageDrift,
    limits: Limits,
    labels: Optional[pd.Series] = None,
    seed: int = 0,
) -> List[Window]:
    measured = []
    for name, group in split(records, window):
        result = measure(name, group, reference, calibration, image_drift, labels, seed)
        result.alerts = alerts(result, limits)
        measured.append(result)
    return measured
