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
