"""The monitor's settings and their defaults, in one light module: the CLI reads them for its flags without
loading TensorFlow."""

import dataclasses
from typing import Optional

EXIT_OK, EXIT_ALERTS = 0, 3  # a bad input exits 1 with its one-line error, as every `pneumonia` command does
ECE_TOLERANCE = 0.05  # above this ECE on validation, Platt scaling maps the probabilities before the estimates
DEFAULT_WINDOW = "day"


@dataclasses.dataclass(frozen=True)
class Limits:
    """When a window raises an alert."""

    # Score drift: a KS p-value below `alpha` and a Jensen-Shannon distance of at least `js_distance` (a large
    # window makes any shift significant; 16-image Kermany test windows measured up to 0.19 against validation).
    alpha: float = 0.01
    js_distance: float = 0.3
    max_ood_share: float = 0.2
    sensitivity_floor: Optional[float] = None
