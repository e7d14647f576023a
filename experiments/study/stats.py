"""The few statistics the studies report: paired differences, t, multiplicity, one test.

Every report's paired comparison goes through :func:`paired_test`: a two-sided
test of a difference, or with a margin an equivalence test (TOST), either
Bonferroni-corrected over the comparisons of its family.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from scipy import stats as scipy_stats


def mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and sample standard deviation (ddof=1; NaN for one value) over axis 0."""
  values = np.asarray(values, np.float64)
  std = values.std(0, ddof=1) if len(values) > 1 else np.full(values.shape[1:], np.nan)
  return values.mean(0), std


def paired_t(differences: np.ndarray) -> float:
  """t statistic of the mean of paired differences ``[n]``; NaN when n < 2 or no spread."""
  d = np.asarray(differences, np.float64)
  if len(d) < 2:
    return float('nan')
  spread = d.std(ddof=1)
  return float(d.mean() / (spread / np.sqrt(len(d)))) if spread > 0 else float('nan')


def critical_t(num_pairs: int, num_comparisons: int, alpha: float = 0.05) -> float:
  """Two-sided critical |t| at family-wise level ``alpha`` over ``num_comparisons`` (Bonferroni)."""
  if num_pairs < 2:
    return float('nan')
  return float(scipy_stats.t.ppf(1 - alpha / (2 * max(num_comparisons, 1)), num_pairs - 1))


def one_sided_critical_t(num_pairs: int, num_comparisons: int, alpha: float = 0.05) -> float:
  """One-sided critical t at family-wise level ``alpha`` over ``num_comparisons`` (Bonferroni)."""
  if num_pairs < 2:
    return float('nan')
  return float(scipy_stats.t.ppf(1 - alpha / max(num_comparisons, 1), num_pairs - 1))


def interval(differences: np.ndarray, num_comparisons: int,
             alpha: float = 0.05) -> tuple[float, float]:
  """Simultaneous two-sided ``1 - alpha`` interval of the mean of paired differences ``[n]``.

  Bonferroni over ``num_comparisons``: mean ± critical t × std / sqrt(n). It
  says which effects the data leave possible, where "not clear" alone does
  not; (NaN, NaN) when n < 2.
  """
  d = np.asarray(differences, np.float64)
  if len(d) < 2:
    return float('nan'), float('nan')
  half = critical_t(len(d), num_comparisons, alpha) * d.std(ddof=1) / np.sqrt(len(d))
  return float(d.mean() - half), float(d.mean() + half)


@dataclasses.dataclass(frozen=True)
class PairedTest:
  """A paired test of the mean of per-seed differences ``[n]``, at a family-wise level.

  A difference test: ``t`` is the paired t, ``critical_t`` the two-sided
  Bonferroni bound, ``interval`` the simultaneous ``1 - alpha`` interval of the
  mean, ``passed`` when |t| reaches the bound. An equivalence test (TOST, with
  ``margin``): ``t`` is the smaller of the two one-sided t, ``critical_t`` the
  one-sided bound, ``interval`` the ``1 - 2 alpha`` one that TOST reads,
  ``passed`` when it lies inside ``(-margin, margin)``.
  """
  mean: float
  t: float
  critical_t: float
  interval: tuple[float, float]
  passed: bool
  margin: Optional[float] = None


def paired_test(differences: np.ndarray, num_comparisons: int, margin: Optional[float] = None,
                alpha: float = 0.05) -> PairedTest:
  """The paired test of ``differences`` ``[n]`` in a family of ``num_comparisons``.

  Without ``margin`` a two-sided test that the mean differs from zero; with one,
  two one-sided tests that it lies within ``±margin`` (see :class:`PairedTest`).
  NaN statistics and ``passed=False`` when n < 2 (and, for TOST, without spread).
  """
  d = np.asarray(differences, np.float64)
  if margin is not None:
    return _equivalence(d, margin, num_comparisons, alpha)
  t = paired_t(d)
  crit = critical_t(len(d), num_comparisons, alpha)
  return PairedTest(float(d.mean()), t, crit, interval(d, num_comparisons, alpha),
                    bool(abs(t) >= crit))


def _equivalence(d: np.ndarray, margin: float, num_comparisons: int, alpha: float) -> PairedTest:
  """Two one-sided tests (TOST) that the mean of paired differences ``[n]`` lies in ±``margin``.

  Each one-sided test at ``alpha / num_comparisons`` (Bonferroni, as the
  two-sided tests of the same family): equivalence is shown when both reject,
  which is when the two-sided ``1 - 2 alpha / num_comparisons`` interval lies
  inside ``(-margin, margin)``.
  """
  if margin <= 0:
    raise ValueError(f'an equivalence margin must be positive, got {margin}')
  n = len(d)
  spread = d.std(ddof=1) if n >= 2 else 0.0
  if spread == 0:
    nan = float('nan')
    return PairedTest(float(d.mean()), nan, nan, (nan, nan), False, margin)
  se = spread / np.sqrt(n)
  t = min((d.mean() + margin) / se, (margin - d.mean()) / se)
  crit = one_sided_critical_t(n, num_comparisons, alpha)
  return PairedTest(float(d.mean()), float(t), crit,
                    (float(d.mean() - crit * se), float(d.mean() + crit * se)),
                    bool(t >= crit), margin)
