"""The drift statistics, numpy + scipy only. Each is scipy's own function or checked against it
(tests/monitor/test_stats.py); the Wasserstein distance is computed from pre-sorted samples so
a million-row window is sorted once per feature, not once per statistic."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as sps  # type: ignore[import-untyped]
from scipy.spatial import distance  # type: ignore[import-untyped]

PSI_EPS = 1e-4  # a bin empty on one side counts as this fraction (PSI is infinite otherwise)
STD_FLOOR = 1e-3  # normalising a constant reference column (Evidently's floor)


def ks(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov: (D, p-value)."""
    result = sps.ks_2samp(reference, current)
    return float(result.statistic), float(result.pvalue)


def chi2(reference_counts: np.ndarray, current_counts: np.ndarray) -> tuple[float, float]:
    """Chi-squared test of homogeneity on a 2xk table of category counts (both sides are
    samples, so not a goodness-of-fit against fixed proportions): (statistic, p-value).
    Categories absent from both sides are dropped; one category left means no evidence. With
    two categories it is Evidently's two-proportion z-test (the statistic is z squared)."""
    table = np.vstack([reference_counts, current_counts]).astype(np.float64)
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or (table.sum(axis=1) == 0).any():
        return 0.0, 1.0
    result = sps.chi2_contingency(table, correction=False)
    return float(result.statistic), float(result.pvalue)


def wasserstein_sorted(reference: np.ndarray, current: np.ndarray) -> float:
    """The 1-Wasserstein distance of two **sorted** samples, equal to
    ``scipy.stats.wasserstein_distance`` (∫|F_ref - F_cur| dx over the merged points). The merge
    of two sorted runs is a linear timsort, and the CDFs are running counts of which side each
    merged point came from (at ties the step has width 0, so the count's order is moot)."""
    if reference.size == 0 or current.size == 0:
        return float("nan")
    merged = np.concatenate([reference, current])
    order = np.argsort(merged, kind="stable")
    n_ref = np.cumsum(order[:-1] < reference.size)  # reference points up to each merged one
    seen = np.arange(1, merged.size, dtype=np.float64)  # merged points up to each one
    gap = np.abs(n_ref * (1 / reference.size + 1 / current.size) - seen / current.size)
    return float(np.dot(gap, np.diff(merged[order])))


def wasserstein_normed(reference: np.ndarray, current: np.ndarray) -> float:
    """Wasserstein distance in reference standard deviations (sorted inputs), as Evidently
    norms it: a pure mean shift of 0.3 sd reads 0.3."""
    return wasserstein_sorted(reference, current) / max(float(np.std(reference)), STD_FLOOR)


def jensen_shannon(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Jensen-Shannon distance (natural log, as scipy and Evidently: 0 … sqrt ln2 ≈ 0.83)."""
    if reference_counts.sum() == 0 or current_counts.sum() == 0:
        return float("nan")
    return float(distance.jensenshannon(reference_counts, current_counts))


def psi(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Population stability index sum (c - r)·ln(c / r) over the same bins, fractions floored at
    :data:`PSI_EPS` (< 0.1 stable, 0.1-0.2 some change, > 0.2 a shift, by convention)."""
    if reference_counts.sum() == 0 or current_counts.sum() == 0:
        return float("nan")
    r = np.maximum(reference_counts / reference_counts.sum(), PSI_EPS)
    c = np.maximum(current_counts / current_counts.sum(), PSI_EPS)
    return float(np.sum((c - r) * np.log(c / r)))


def bin_counts(sorted_values: np.ndarray, inner_edges: np.ndarray) -> np.ndarray:
    """Counts of a sorted sample in the bins (-∞, e1], (e1, e2], …, (ek, ∞): k binary searches,
    not a pass over the sample."""
    cuts = np.searchsorted(sorted_values, inner_edges, side="right")
    return np.diff(np.concatenate([[0], cuts, [sorted_values.size]]))


def psi_edges(reference_sorted: np.ndarray, bins: int = 10) -> np.ndarray:
    """The inner edges of PSI's bins: the reference's deciles (distinct ones)."""
    if reference_sorted.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(reference_sorted, np.linspace(0, 1, bins + 1)[1:-1]))


def benjamini_hochberg(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (scipy's ``false_discovery_control``): a feature
    drifts when its adjusted p-value is under alpha, which bounds the expected share of false
    alarms among the flagged features by alpha."""
    values = np.asarray(pvalues, dtype=np.float64)
    if values.size == 0:
        return values
    return np.asarray(sps.false_discovery_control(values, method="bh"), dtype=np.float64)
