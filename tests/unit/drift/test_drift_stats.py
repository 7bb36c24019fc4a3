"""The statistics on raw samples equal scipy's, and PSI and the Z-test equal their formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from scipy.spatial import distance

from modelops.drift import stats


@pytest.mark.parametrize(("n", "m"), [(1, 1), (7, 13), (500, 2000)])
def test_wasserstein_of_raw_samples_equals_scipy(n: int, m: int) -> None:
    rng = np.random.default_rng(n)
    u, v = rng.normal(size=n), rng.gamma(2.0, size=m)
    assert stats.wasserstein(u, v) == pytest.approx(sps.wasserstein_distance(u, v), rel=1e-12)


def test_weighted_wasserstein_equals_scipy_with_weights() -> None:
    rng = np.random.default_rng(1)
    u, v = rng.integers(0, 20, 50).astype(float), rng.normal(10, 3, 40)
    uw, vw = rng.integers(0, 5, 50).astype(float), rng.random(40)
    expected = sps.wasserstein_distance(u, v, uw, vw)
    assert stats.wasserstein(u, v, uw, vw) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("n", "m"), [(20, 30), (300, 300), (1000, 4000)])
def test_ks_2samp_of_raw_samples_equals_scipy_exact_branch(n: int, m: int) -> None:
    rng = np.random.default_rng(m)
    r, c = rng.normal(size=n), rng.normal(0.1, 1.0, m).round(1)  # ties across samples too
    expected = sps.ks_2samp(r, c)
    assert stats.ks_2samp(r, c) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)


def test_ks_2samp_of_large_samples_equals_scipy_asymptotic_branch() -> None:
    rng = np.random.default_rng(3)
    r, c = rng.normal(size=30_000), rng.normal(0.02, 1.0, 20_000).round(2)
    expected = sps.ks_2samp(r, c)
    assert stats.ks_2samp(r, c) == pytest.approx((expected.statistic, expected.pvalue), rel=1e-9)


def test_ks_2samp_of_counted_values_equals_scipy_on_expanded_samples() -> None:
    values = np.arange(8.0)
    rc, cc = np.array([5, 0, 3, 9, 1, 0, 2, 4]), np.array([1, 2, 0, 4, 8, 3, 0, 1])
    expected = sps.ks_2samp(np.repeat(values, rc), np.repeat(values, cc))
    got = stats.ks_2samp(values, values, rc, cc)
    assert got == pytest.approx((expected.statistic, expected.pvalue), rel=1e-12)


def test_jensenshannon_equals_scipy_natural_log() -> None:
    p, q = np.array([10, 0, 5, 85]), np.array([3, 7, 0, 90])
    assert stats.jensenshannon(p, q) == pytest.approx(distance.jensenshannon(p, q), rel=1e-12)


def test_chisquare_equals_scipy_against_scaled_reference_frequencies() -> None:
    ref, cur = np.array([400, 300, 200, 100]), np.array([30, 25, 35, 10])
    expected = sps.chisquare(cur, ref * cur.sum() / ref.sum()).pvalue
    assert stats.chisquare(ref, cur) == pytest.approx(expected, rel=1e-12)


def test_chisquare_ignores_cells_empty_in_both_samples() -> None:
    ref, cur = np.array([400, 0, 200]), np.array([30, 0, 35])
    assert stats.chisquare(ref, cur) == pytest.approx(stats.chisquare([400, 200], [30, 35]))


def test_chisquare_of_a_category_absent_from_reference_is_zero() -> None:
    assert stats.chisquare([50, 50, 0], [40, 50, 1]) == 0.0


def test_ztest_equals_two_proportion_formula() -> None:
    ref, cur = np.array([700, 300]), np.array([120, 80])
    p1, p2, pooled = 0.7, 0.6, 820 / 1200
    z = (p1 - p2) / math.sqrt(pooled * (1 - pooled) * (1 / 1000 + 1 / 200))
    assert stats.ztest(ref, cur) == pytest.approx(2 * (1 - sps.norm.cdf(abs(z))), rel=1e-9)


def test_ztest_of_one_shared_value_is_one() -> None:
    assert stats.ztest([10, 0], [5, 0]) == 1.0


def test_psi_equals_direct_formula_with_epsilon_for_empty_cells() -> None:
    ref, cur = np.array([50.0, 30.0, 20.0, 0.0]), np.array([40.0, 40.0, 0.0, 20.0])
    p = np.array([0.5, 0.3, 0.2, 1e-4])
    q = np.array([0.4, 0.4, 1e-4, 0.2])
    assert stats.psi(ref, cur) == pytest.approx(float(np.sum((p - q) * np.log(p / q))), rel=1e-12)
