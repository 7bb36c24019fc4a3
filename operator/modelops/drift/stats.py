"""Drift statistics on weighted samples and count tables.

Every function takes weights or counts, so one implementation serves raw samples (unit weights,
where each equals its scipy counterpart) and sketches (bins). Conventions follow Evidently 0.7's
stattests: natural-log Jensen-Shannon distance over categories present in either sample,
chi-squared goodness of fit against reference frequencies scaled to the current size,
two-proportion Z-test, and scipy's choice of exact or asymptotic KS p-value.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import special
from scipy import stats as sps

FloatArray = npt.NDArray[np.float64]
ArrayLike = npt.ArrayLike

# scipy.stats.ks_2samp computes the exact p-value up to this sample size, asymptotic above.
KS_EXACT_MAX_N = 10_000
PSI_EPSILON = 1e-4


def wasserstein(
    u_values: ArrayLike,
    v_values: ArrayLike,
    u_weights: ArrayLike | None = None,
    v_weights: ArrayLike | None = None,
) -> float:
    """First Wasserstein distance: the area between the two weighted CDFs."""
    grid, gap = _cdf_gap(u_values, v_values, u_weights, v_weights)
    return float(np.sum(np.abs(gap[:-1]) * np.diff(grid)))


def ks_2samp(
    ref_values: ArrayLike,
    cur_values: ArrayLike,
    ref_counts: ArrayLike | None = None,
    cur_counts: ArrayLike | None = None,
) -> tuple[float, float]:
    """Two-sided two-sample KS (statistic, p-value) of integer-weighted samples.

    Only the order of the values matters, so callers may pass ranks. The p-value is the one
    scipy.stats.ks_2samp(method="auto") gives for the expanded samples.
    """
    r, rw = _weighted(ref_values, ref_counts)
    c, cw = _weighted(cur_values, cur_counts)
    n1, n2 = round(rw.sum()), round(cw.sum())
    if n1 == 0 or n2 == 0:
        raise ValueError("KS needs two non-empty samples")
    if max(n1, n2) <= KS_EXACT_MAX_N:
        expanded = sps.ks_2samp(
            np.repeat(r, rw.astype(np.int64)), np.repeat(c, cw.astype(np.int64))
        )
        return float(expanded.statistic), float(expanded.pvalue)
    grid, gap = _cdf_gap(r, c, rw, cw)
    last_of_ties = np.append(grid[1:] != grid[:-1], True)
    d = float(np.max(np.abs(gap[last_of_ties])))
    # scipy's asymptotic branch: Smirnov's distribution at the effective sample size.
    en = float(np.round(n1 * n2 / (n1 + n2)))
    return d, float(np.clip(sps.kstwo.sf(d, en), 0.0, 1.0))


def jensenshannon(ref_counts: ArrayLike, cur_counts: ArrayLike) -> float:
    """Jensen-Shannon distance (natural log, as scipy.spatial.distance.jensenshannon)."""
    p, q = _proportions(ref_counts), _proportions(cur_counts)
    m = (p + q) / 2.0
    divergence = float(np.sum(special.rel_entr(p, m)) + np.sum(special.rel_entr(q, m))) / 2.0
    return math.sqrt(max(divergence, 0.0))


def psi(ref_counts: ArrayLike, cur_counts: ArrayLike, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index, sum of (p - q) ln(p / q).

    An empty cell counts as proportion ``epsilon`` (without renormalizing). Evidently uses 1e-4
    too, unless a non-empty cell is smaller.
    """
    p, q = _proportions(ref_counts), _proportions(cur_counts)
    p, q = np.where(p > 0, p, epsilon), np.where(q > 0, q, epsilon)
    return float(np.sum((p - q) * np.log(p / q)))


def chisquare(ref_counts: ArrayLike, cur_counts: ArrayLike) -> float:
    """p-value of the current counts against reference frequencies scaled to the current size."""
    ref = np.asarray(ref_counts, dtype=np.float64)
    obs = np.asarray(cur_counts, dtype=np.float64)
    present = (ref > 0) | (obs > 0)
    ref, obs = ref[present], obs[present]
    expected = ref * (obs.sum() / ref.sum())
    if np.any(expected == 0):  # a category the reference never had: infinite statistic
        return 0.0
    if ref.size < 2:
        return 1.0
    return float(sps.chisquare(obs, expected).pvalue)


def ztest(ref_counts: ArrayLike, cur_counts: ArrayLike) -> float:
    """Two-sided two-proportion Z-test p-value for the reference's most frequent cell."""
    ref = np.asarray(ref_counts, dtype=np.float64)
    cur = np.asarray(cur_counts, dtype=np.float64)
    key = int(np.argmax(ref))
    n1, n2 = float(ref.sum()), float(cur.sum())
    p1, p2 = ref[key] / n1, cur[key] / n2
    pooled = (ref[key] + cur[key]) / (n1 + n2)
    if pooled <= 0.0 or pooled >= 1.0:  # both samples are all one same value
        return 1.0
    z = (p1 - p2) / math.sqrt(pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2))
    return float(2.0 * sps.norm.sf(abs(z)))


def _weighted(values: ArrayLike, weights: ArrayLike | None) -> tuple[FloatArray, FloatArray]:
    x = np.asarray(values, dtype=np.float64).ravel()
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if w.shape != x.shape:
        raise ValueError("values and weights differ in length")
    return x, w


def _cdf_gap(
    u_values: ArrayLike,
    v_values: ArrayLike,
    u_weights: ArrayLike | None,
    v_weights: ArrayLike | None,
) -> tuple[FloatArray, FloatArray]:
    """All values sorted, and F_u - F_v after each (exact at the last of tied values)."""
    u, uw = _weighted(u_values, u_weights)
    v, vw = _weighted(v_values, v_weights)
    order = np.argsort(np.concatenate([u, v]), kind="stable")
    signed = np.concatenate([uw / uw.sum(), -vw / vw.sum()])
    return np.concatenate([u, v])[order], np.cumsum(signed[order])


def _proportions(counts: ArrayLike) -> FloatArray:
    c = np.asarray(counts, dtype=np.float64)
    total = float(c.sum())
    if total <= 0:
        raise ValueError("proportions of an empty sample")
    return np.divide(c, total)
