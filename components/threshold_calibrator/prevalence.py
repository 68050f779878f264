"""A site's pneumonia prevalence from unlabelled scores (Saerens, Latinne & Decaestecker, 2002), and the threshold
that keeps the model's decision rule under that prior: shared by site calibration and the k-shot analysis."""

from typing import Tuple

import numpy as np

EM_TOLERANCE, EM_MAX_ITERATIONS = 1e-6, 1000

# Training weights the classes equally, so the model's probabilities assume a pneumonia prior of one half.
TRAINING_PRIOR = 0.5


def em_prevalence(probabilities: np.ndarray, model_prior: float) -> Tuple[float, int]:
    """Saerens et al. (2002): the class prior of unlabelled data that makes the model's posteriors, adjusted to
    it, average to it. Returns (prevalence, iterations)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1 - 1e-7)
    prior = model_prior
    for iteration in range(1, EM_MAX_ITERATIONS + 1):
        positive = p * prior / model_prior
        adjusted = positive / (positive + (1 - p) * (1 - prior) / (1 - model_prior))
        updated = float(adjusted.mean())
        if abs(updated - prior) < EM_TOLERANCE:
            return updated, iteration
        prior = updated
    return prior, EM_MAX_ITERATIONS


def prior_adjusted_threshold(value: float, model_prior: float, prevalence: float) -> float:
    """The threshold on the model's probability that equals `value` on the posterior adjusted to `prevalence`."""
    positive, negative = prevalence / model_prior, (1 - prevalence) / (1 - model_prior)
    return float(value * negative / (positive * (1 - value) + value * negative))


def bootstrap_prevalence(
    probabilities: np.ndarray, model_prior: float, samples: int = 200, seed: int = 0
) -> Tuple[float, float]:
    rng = np.random.default_rng(seed)
    estimates = [em_prevalence(rng.choice(probabilities, probabilities.size), model_prior)[0] for _ in range(samples)]
    lower, upper = np.percentile(estimates, [2.5, 97.5])
    return float(lower), float(upper)
