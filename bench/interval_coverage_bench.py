"""How often the Evaluator's analytic 95% intervals hold the truth, next to TFMA's Poisson bootstrap, on a run's
real scores.

The run's latest evaluated model scores its test and external splits once. Each split's scores then stand for a
population: DRAWS samples of SIZE films are drawn from it with replacement, and on each sample both intervals are
computed for the AUC, sensitivity, specificity and accuracy at the served threshold, and the Brier score: the
analytic ones by the Evaluator's own code (pipeline/interval_metrics.py), the bootstrap as TFMA computes it
(20 Poisson replicates, a t interval around their mean). Coverage is the share of samples whose interval holds
the figure on the whole split. Tolerance, fixed before the run: the two coverages differ by at most 0.05 on every
row, and the analytic coverage lies in [0.90, 0.99]. Both kinds of interval and their cost are also printed for the
whole split, as the Evaluator reports them.

Usage: .venv/bin/python -m bench.interval_coverage_bench --root ROOT [--size 200] [--draws 300]
       [--into docs/RESULTS.md --section intervals]
"""

import argparse
import time
from typing import Dict, Tuple

import numpy as np
from scipy import stats

from pipeline import interval_metrics
from pipeline.config import RunConfig
from pneumonia.analysis import generated
from pneumonia.analysis.tables import format_number, format_rows
from pneumonia.runs import scoring
from pneumonia.runs.store import latest_evaluations

SPLITS = ("test", "external")
MEASURES = ("auc", "recall", "specificity", "binary_accuracy", "brier_score")
SHOWN = {
    "auc": "AUC",
    "recall": "sensitivity@thr",
    "specificity": "specificity@thr",
    "binary_accuracy": "accuracy@thr",
    "brier_score": "Brier",
}
REPLICATES = 20  # TFMA's Poisson bootstrap
TOLERANCE, COVERAGE_RANGE = 0.05, (0.90, 0.99)


def weighted_figures(labels: np.ndarray, probability: np.ndarray, decision: np.ndarray, weights: np.ndarray):
    """The five figures with per-example weights (a Poisson replicate's counts): the AUC as the weighted
    Mann-Whitney statistic (ties half), the rest at decision > 0.5 as TFMA counts them."""
    positive, called = labels == 1, decision > interval_metrics.THRESHOLD
    values, inverse = np.unique(probability, return_inverse=True)
    negative_weight = np.bincount(inverse, np.where(positive, 0.0, weights), minlength=values.size)
    outranked = (np.cumsum(negative_weight) - negative_weight)[inverse] + 0.5 * negative_weight[inverse]
    auc = (weights * positive * outranked).sum() / (weights[positive].sum() * weights[~positive].sum())
    correct = positive == called
    return {
        "auc": auc,
        "recall": weights[positive & called].sum() / weights[positive].sum(),
        "specificity": weights[~positive & ~called].sum() / weights[~positive].sum(),
        "binary_accuracy": weights[correct].sum() / weights.sum(),
        "brier_score": (weights * (probability - labels) ** 2).sum() / weights.sum(),
    }


def bootstrap_intervals(rng, labels, probability, decision) -> Dict[str, Tuple[float, float]]:
    replicates = [
        weighted_figures(labels, probability, decision, rng.poisson(1.0, labels.size).astype(float))
        for _ in range(REPLICATES)
    ]
    t = stats.t.ppf(0.975, REPLICATES - 1)
    intervals = {}
    for measure in MEASURES:
        values = np.array([replicate[measure] for replicate in replicates])
        mean, spread = values.mean(), values.std(ddof=1)
        intervals[measure] = (mean - t * spread, mean + t * spread)
    return intervals


def analytic_intervals(labels, probability, decision) -> Dict[str, Tuple[float, float]]:
    """The Evaluator's own: AUC and Brier from the probability, the rest from the decision score at 0.5."""
    on_probability = interval_metrics.IntervalSums().add(labels, probability).intervals()
    at_threshold = interval_metrics.IntervalSums().add(labels, decision).intervals()
    return {
        measure: (on_probability if measure in ("auc", "brier_score") else at_threshold)[measure]
        for measure in MEASURES
    }


def coverage_rows(scored, size: int, draws: int, seed: int):
    rng = np.random.default_rng(seed)
    rows = [
        [
            "split",
            "figure",
            "whole split",
            "analytic coverage",
            "bootstrap coverage",
            "difference",
            "analytic mean width",
            "bootstrap mean width",
            "within tolerance",
        ]
    ]
    verdicts = []
    for split, (labels, probability, decision) in scored.items():
        truth = weighted_figures(labels, probability, decision, np.ones(labels.size))
        hits = {kind: {measure: [] for measure in MEASURES} for kind in ("analytic", "bootstrap")}
        for _ in range(draws):
            pick = rng.integers(0, labels.size, size)
            sample = labels[pick], probability[pick], decision[pick]
            if sample[0].min() == sample[0].max():
                continue  # one class only: no AUC, no interval to judge
            for kind, intervals in (
                ("analytic", analytic_intervals(*sample)),
                ("bootstrap", bootstrap_intervals(rng, *sample)),
            ):
                for measure, (lower, upper) in intervals.items():
                    hits[kind][measure].append((lower <= truth[measure] <= upper, upper - lower))
        for measure in MEASURES:
            analytic, bootstrap = (np.array(hits[kind][measure]) for kind in ("analytic", "bootstrap"))
            cover_a, cover_b = analytic[:, 0].mean(), bootstrap[:, 0].mean()
            ok = abs(cover_a - cover_b) <= TOLERANCE and COVERAGE_RANGE[0] <= cover_a <= COVERAGE_RANGE[1]
            verdicts.append(ok)
            rows.append(
                [
                    split,
                    SHOWN[measure],
                    format_number(truth[measure]),
                    format_number(cover_a),
                    format_number(cover_b),
                    f"{cover_a - cover_b:+.3f}",
                    format_number(analytic[:, 1].mean()),
                    format_number(bootstrap[:, 1].mean()),
                    "yes" if ok else "no",
                ]
            )
    return rows, all(verdicts)


def whole_split_rows(scored, seed: int):
    rng = np.random.default_rng(seed)
    rows = [
        ["split", "figure", "value", "analytic 95% interval", "bootstrap 95% interval", "analytic ms", "bootstrap ms"]
    ]
    for split, (labels, probability, decision) in scored.items():
        truth = weighted_figures(labels, probability, decision, np.ones(labels.size))
        start = time.perf_counter()
        analytic = analytic_intervals(labels, probability, decision)
        analytic_ms = (time.perf_counter() - start) * 1000
        start = time.perf_counter()
        bootstrap = bootstrap_intervals(rng, labels, probability, decision)
        bootstrap_ms = (time.perf_counter() - start) * 1000
        for measure in MEASURES:
            rows.append(
                [
                    split,
                    SHOWN[measure],
                    format_number(truth[measure]),
                    "[{}, {}]".format(*map(format_number, analytic[measure])),
                    "[{}, {}]".format(*map(format_number, bootstrap[measure])),
                    f"{analytic_ms:.1f}",
                    f"{bootstrap_ms:.1f}",
                ]
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="run root whose latest evaluated model is scored")
    parser.add_argument("--size", type=int, default=200, help="films per drawn sample (default 200)")
    parser.add_argument("--draws", type=int, default=300, help="samples per split (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--into", metavar="FILE", help="write the tables into FILE's generated section")
    parser.add_argument("--section", default="intervals")
    args = parser.parse_args()
    [item] = latest_evaluations(RunConfig(root=args.root).metadata_path)[-1:]
    outputs = scoring.scored_outputs(item.examples_uri, list(SPLITS), item.model_uri)
    scored = {
        split: (np.array(sample.labels), out["probability"], out["decision_score"])
        for split, (sample, out) in outputs.items()
    }
    coverage, ok = coverage_rows(scored, args.size, args.draws, args.seed)
    text = "\n\n".join(
        [
            f"Model: {item.architecture} ({item.image_size} px) under `{generated.shown_path(args.root)}`; "
            f"{args.draws} samples of {args.size} films per split, drawn with replacement (seed {args.seed}).",
            format_rows(coverage, markdown=bool(args.into)),
            f"Every row within tolerance (coverages within {TOLERANCE}, analytic coverage in "
            f"[{COVERAGE_RANGE[0]}, {COVERAGE_RANGE[1]}]): {'yes' if ok else 'no'}.",
            "On the whole split, as the Evaluator reports them:",
            format_rows(whole_split_rows(scored, args.seed), markdown=bool(args.into)),
        ]
    )
    if args.into:
        generated.replace_generated(args.into, text, args.section)
        print(f"updated {args.into}")
    print(text)


if __name__ == "__main__":
    main()
