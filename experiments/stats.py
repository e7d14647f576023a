"""The few statistics the study reports: paired differences, t, multiplicity."""

from __future__ import annotations

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


def equivalence(differences: np.ndarray, margin: float, num_comparisons: int,
                alpha: float = 0.05) -> dict:
  """Two one-sided tests (TOST) that the mean of paired differences ``[n]`` lies in ±``margin``.

  Each one-sided test at ``alpha / num_comparisons`` (Bonferroni, as the
  two-sided tests of the same family): equivalence is shown when both reject,
  which is when the two-sided ``1 - 2 alpha / num_comparisons`` interval lies
  inside ``(-margin, margin)``. Returns ``{'t': the smaller of the two one-sided
  t statistics, 'critical_t': one-sided, 'interval': that interval, 'passed'}``,
  NaNs and ``passed=False`` when n < 2 or there is no spread.
  """
  d = np.asarray(differences, np.float64)
  if margin <= 0:
    raise ValueError(f'an equivalence margin must be positive, got {margin}')
  n = len(d)
  spread = d.std(ddof=1) if n >= 2 else 0.0
  if spread == 0:
    nan = float('nan')
    return {'t': nan, 'critical_t': nan, 'interval': [nan, nan], 'passed': False}
  se = spread / np.sqrt(n)
  t = min((d.mean() + margin) / se, (margin - d.mean()) / se)
  crit = one_sided_critical_t(n, num_comparisons, alpha)
  return {'t': float(t), 'critical_t': crit,
          'interval': [float(d.mean() - crit * se), float(d.mean() + crit * se)],
          'passed': bool(t >= crit)}
