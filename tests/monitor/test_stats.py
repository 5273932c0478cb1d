"""The drift statistics against scipy's own functions and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from scipy.spatial import distance

from mlcloud.monitor import stats


@pytest.mark.parametrize(("n", "m", "seed"), [(10, 7, 0), (300, 1000, 1), (5000, 200, 2)])
def test_wasserstein_of_sorted_samples_equals_scipy(n: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    u, v = rng.normal(size=n), rng.standard_t(3, size=m) + 0.2
    expected = sps.wasserstein_distance(u, v)
    assert stats.wasserstein_sorted(np.sort(u), np.sort(v)) == pytest.approx(expected, rel=1e-12)
    normed = stats.wasserstein_normed(np.sort(u), np.sort(v))
    assert normed == pytest.approx(expected / np.std(u), rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-5, 5), min_size=1, max_size=40),
    st.lists(st.integers(-5, 5), min_size=1, max_size=40),
)
def test_wasserstein_with_ties_equals_scipy(u: list[int], v: list[int]) -> None:
    a, b = np.sort(np.array(u, dtype=float)), np.sort(np.array(v, dtype=float))
    assert stats.wasserstein_sorted(a, b) == pytest.approx(
        sps.wasserstein_distance(a, b), rel=1e-9, abs=1e-12
    )


def test_a_pure_shift_reads_as_its_size_in_standard_deviations() -> None:
    u = np.sort(np.random.default_rng(3).normal(size=20_000))
    assert stats.wasserstein_normed(u, u + 0.3 * u.std()) == pytest.approx(0.3, rel=1e-9)


def test_ks_is_scipys_two_sample_test() -> None:
    rng = np.random.default_rng(4)
    u, v = rng.normal(size=400), rng.normal(0.5, 1, size=300)
    d, p = stats.ks(u, v)
    expected = sps.ks_2samp(u, v)
    assert (d, p) == (pytest.approx(expected.statistic), pytest.approx(expected.pvalue))
    assert p < 0.01


def test_chi2_is_a_test_of_homogeneity_on_the_two_samples() -> None:
    ref, cur = np.array([50.0, 30.0, 20.0, 0.0]), np.array([20.0, 30.0, 40.0, 0.0])
    statistic, p = stats.chi2(ref, cur)
    table = np.array([[50, 30, 20], [20, 30, 40]])  # the empty category dropped
    expected = sps.chi2_contingency(table, correction=False)
    assert statistic == pytest.approx(expected.statistic) and p == pytest.approx(expected.pvalue)
    assert stats.chi2(np.array([10.0]), np.array([5.0])) == (0.0, 1.0)  # one category: no test


def test_jensen_shannon_and_psi() -> None:
    ref, cur = np.array([40.0, 40.0, 20.0]), np.array([20.0, 40.0, 40.0])
    assert stats.jensen_shannon(ref, cur) == pytest.approx(distance.jensenshannon(ref, cur))
    r, c = ref / ref.sum(), cur / cur.sum()
    assert stats.psi(ref, cur) == pytest.approx(float(np.sum((c - r) * np.log(c / r))))
    assert stats.psi(ref, ref) == 0.0
    # an empty bin on one side is floored, not infinite
    assert np.isfinite(stats.psi(np.array([10.0, 0.0]), np.array([5.0, 5.0])))


def test_bin_counts_match_a_histogram() -> None:
    values = np.sort(np.random.default_rng(5).normal(size=1000))
    inner = np.array([-1.0, 0.0, 1.0])
    counts = stats.bin_counts(values, inner)
    expected = [np.sum(values <= -1), np.sum((values > -1) & (values <= 0)),
                np.sum((values > 0) & (values <= 1)), np.sum(values > 1)]  # fmt: skip
    assert counts.tolist() == expected
    assert stats.psi_edges(values).size == 9


def test_benjamini_hochberg_by_hand() -> None:
    p = [0.01, 0.04, 0.03, 0.20]
    # sorted 0.01, 0.03, 0.04, 0.20 -> p*m/rank = 0.04, 0.06, 0.0533, 0.20 -> cumulative min
    expected = [0.04, 0.0533333, 0.0533333, 0.20]
    assert stats.benjamini_hochberg(p).tolist() == pytest.approx(expected, rel=1e-5)
    assert stats.benjamini_hochberg([]).size == 0


def test_chi2_on_two_categories_is_the_two_proportion_z_test() -> None:
    ref, cur = np.array([300.0, 700.0]), np.array([90.0, 110.0])
    p1, p2 = ref[0] / ref.sum(), cur[0] / cur.sum()
    pooled = (ref[0] + cur[0]) / (ref.sum() + cur.sum())
    z = (p1 - p2) / np.sqrt(pooled * (1 - pooled) * (1 / ref.sum() + 1 / cur.sum()))
    statistic, p = stats.chi2(ref, cur)
    assert statistic == pytest.approx(z**2) and p == pytest.approx(2 * sps.norm.sf(abs(z)))
