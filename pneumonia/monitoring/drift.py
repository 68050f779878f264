"""Drift of one window against the reference: of the scores (two-sample Kolmogorov-Smirnov, Jensen-Shannon
distance) and of the image statistics (TFDV: the window's statistics validated with the reference's as
`previous_statistics`, against a schema whose drift comparators hold the thresholds)."""

import dataclasses
import os
from typing import Dict, List

import numpy as np
import pandas as pd
import tensorflow_data_validation as tfdv
from scipy import stats
from scipy.spatial import distance

from pneumonia.monitoring.logs import MonitorError

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "drift_schema.pbtxt")
SCORE_BINS = np.linspace(0.0, 1.0, 21)


@dataclasses.dataclass(frozen=True)
class ScoreDrift:
    ks_statistic: float
    ks_pvalue: float
    js_distance: float  # base 2: 0 for the same histogram, 1 for disjoint ones


def score_drift(window: np.ndarray, reference: np.ndarray) -> ScoreDrift:
    """The window's probabilities against validation's."""
    test = stats.ks_2samp(window, reference)
    histograms = [np.histogram(np.clip(p, 0.0, 1.0), SCORE_BINS)[0] + 1e-9 for p in (window, reference)]
    return ScoreDrift(float(test.statistic), float(test.pvalue), float(distance.jensenshannon(*histograms, base=2)))


@dataclasses.dataclass(frozen=True)
class FeatureDrift:
    feature: str
    divergence: float  # TFDV's approximate Jensen-Shannon divergence
    threshold: float

    @property
    def drifted(self) -> bool:
        return self.divergence > self.threshold


def _statistics(frame: pd.DataFrame):
    """TFDV statistics of the columns that hold at least one number (a model without an OOD guard logs none)."""
    return tfdv.generate_statistics_from_dataframe(frame.loc[:, frame.notna().any()].astype(float))


class ImageDrift:
    """The schema's drift comparators, with the reference's statistics computed once."""

    def __init__(self, reference_statistics: pd.DataFrame, schema_file: str = SCHEMA_FILE):
        try:
            self.schema = tfdv.load_schema_text(schema_file)
        except Exception as error:  # a missing file, or text that is not a Schema: several error types
            raise MonitorError(f"cannot read the drift schema {schema_file}: {str(error).splitlines()[0]}")
        self.features = [feature.name for feature in self.schema.feature if feature.HasField("drift_comparator")]
        if not self.features:
            raise MonitorError(f"the drift schema {schema_file} has no feature with a drift_comparator")
        unknown = sorted(set(self.features) - set(reference_statistics.columns))
        if unknown:
            raise MonitorError(f"the drift schema {schema_file} names features the log does not record: {unknown}")
        self.reference = _statistics(reference_statistics[self.features])

    def check(self, window_statistics: pd.DataFrame) -> List[FeatureDrift]:
        """Every compared feature's divergence, highest first."""
        anomalies = tfdv.validate_statistics(
            _statistics(window_statistics[self.features]), self.schema, previous_statistics=self.reference
        )
        found: Dict[str, FeatureDrift] = {}
        for info in anomalies.drift_skew_info:
            for measurement in info.drift_measurements:
                feature = ".".join(info.path.step)
                found[feature] = FeatureDrift(feature, float(measurement.value), float(measurement.threshold))
        return sorted(found.values(), key=lambda drift: -drift.divergence)
