"""Analysis: tables across runs (compare, ablation, threshold policies, k-shot, errors) and the writer of
docs/RESULTS.md's generated sections."""
