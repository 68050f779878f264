"""Where the model looks: the share of Grad-CAM mass on the image border, per outcome.

The models were seen attending to film edges, collimation borders and laterality markers rather than the
lungs. This metric makes that measurable: the share of a Grad-CAM map's (positive) mass that falls in the
outer `BORDER_BAND` of each side. The band is fixed, not fitted: 12.5% per side is 43.75% of the area, so a
map spread evenly scores 0.4375 and a model that looks at the central lung window scores well below it.
"""

import dataclasses
import json
from typing import Dict, List

import numpy as np
import tensorflow as tf

BORDER_BAND = 0.125
BORDER_AREA = 1.0 - (1.0 - 2 * BORDER_BAND) ** 2  # 0.4375: an even map's share
ATTENTION_FILE = "attention.json"
# Outcome at the model's threshold: (name, true label, predicted label).
OUTCOMES = (("TP", 1, 1), ("TN", 0, 0), ("FP", 0, 1), ("FN", 1, 0))


def border_mask(height: int, width: int, band: float = BORDER_BAND) -> np.ndarray:
    """True on the outer `band` of each side (rounded to whole pixels)."""
    rows, cols = round(height * band), round(width * band)
    mask = np.ones((height, width), bool)
    mask[rows : height - rows, cols : width - cols] = False
    return mask


def border_share(maps: np.ndarray, band: float = BORDER_BAND) -> np.ndarray:
    """Per map [N, H, W]: the share of its positive mass on the border; NaN for an all-zero map."""
    positive = np.clip(np.asarray(maps, np.float64), 0.0, None)
    total = positive.sum(axis=(1, 2))
    on_border = positive[:, border_mask(*positive.shape[1:], band)].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, on_border / total, np.nan)


@dataclasses.dataclass(frozen=True)
class OutcomeShare:
    images: int
    mean: float  # NaN when no image of this outcome has a non-zero map


def by_outcome(
    shares: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, threshold: float
) -> Dict[str, OutcomeShare]:
    """Mean border share per outcome (TP/TN/FP/FN at `threshold`) and how many images it averages."""
    predicted = (probabilities >= threshold).astype(int)
    result = {}
    for name, truth, guess in OUTCOMES:
        chosen = shares[(labels == truth) & (predicted == guess)]
        finite = chosen[np.isfinite(chosen)]
        result[name] = OutcomeShare(int(chosen.size), float(finite.mean()) if finite.size else float("nan"))
    finite = shares[np.isfinite(shares)]
    result["all"] = OutcomeShare(int(shares.size), float(finite.mean()) if finite.size else float("nan"))
    return result


def write(path: str, table: Dict[str, Dict[str, OutcomeShare]]) -> None:
    """`attention.json` beside the report: split -> outcome -> {images, mean}, for `pneumonia compare`."""
    plain = {
        split: {
            outcome: {"images": share.images, "mean": None if np.isnan(share.mean) else share.mean}
            for outcome, share in outcomes.items()
        }
        for split, outcomes in table.items()
    }
    with tf.io.gfile.GFile(path, "w") as f:
        json.dump({"band": BORDER_BAND, "band_area": BORDER_AREA, "splits": plain}, f, indent=2)  # split order kept


def read(path: str) -> Dict[str, Dict[str, OutcomeShare]]:
    with tf.io.gfile.GFile(path) as f:
        splits = json.load(f)["splits"]
    return {
        split: {
            outcome: OutcomeShare(item["images"], float("nan") if item["mean"] is None else item["mean"])
            for outcome, item in outcomes.items()
        }
        for split, outcomes in splits.items()
    }


def columns() -> List[str]:
    return [name for name, _, _ in OUTCOMES] + ["all"]
