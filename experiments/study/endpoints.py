"""What a declared test measures: each endpoint by name, its text, and ``a`` minus ``b`` on it.

Equal cost is taken as an anytime network delivers it: at a budget, the
accuracy of the deepest exit (or, early exit allowed, the costliest operating
point) whose FLOPs fit.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from experiments.study.arms import ArmRuns

NUM_BUDGETS = 8  # the equal-cost grid: log-spaced over the range both networks cover


def deliverable(mflops: Sequence[float], accuracy: Sequence[float],
                budgets: np.ndarray) -> np.ndarray:
  """Accuracy an anytime network delivers at each budget: its deepest exit that fits.

  ``mflops`` are the exits' cumulative costs (increasing); a budget below the
  first exit's cost delivers nothing (NaN).
  """
  fits = np.searchsorted(np.asarray(mflops), np.asarray(budgets), side='right') - 1
  return np.where(fits >= 0, np.asarray(accuracy)[np.maximum(fits, 0)], np.nan)


def early_exit_delivered(mflops: Sequence[float], accuracy: Sequence[float],
                         curve: Sequence[tuple[float, float]], budgets: np.ndarray) -> np.ndarray:
  """Accuracy delivered at each budget of mean MFLOPs per image, early exit allowed.

  The operating points are every exit alone (``mflops``, ``accuracy``) and the
  early-exit curve's points (``curve``: ``(mean MFLOPs, accuracy)``, thresholds
  calibrated on validation); at a budget the network runs the point of most
  FLOPs that fits (chosen by cost, never by test accuracy).
  """
  points = sorted(zip([*mflops, *(f for f, _ in curve)], [*accuracy, *(a for _, a in curve)]))
  return deliverable([f for f, _ in points], [a for _, a in points], budgets)


def budgets(a_mflops: Sequence[float], b_mflops: Sequence[float],
            num: int = NUM_BUDGETS) -> np.ndarray:
  """``num`` log-spaced budgets from where both networks deliver to where neither adds more."""
  lo = max(a_mflops[0], b_mflops[0])
  hi = min(a_mflops[-1], b_mflops[-1])
  if not lo < hi:
    raise ValueError(f'the networks\' FLOPs ranges do not overlap: {a_mflops} and {b_mflops}')
  return np.geomspace(lo, hi, num)


def _first_exit(a: ArmRuns, b: ArmRuns, seed: int) -> float:
  return a.test[seed][0] - b.test[seed][0]


def _mean_over_exits(a: ArmRuns, b: ArmRuns, seed: int) -> float:
  return float(np.mean(a.test[seed]) - np.mean(b.test[seed]))


def _deliverable_cost(a: ArmRuns, b: ArmRuns, seed: int) -> float:
  grid = budgets(a.mflops, b.mflops)
  return float(np.mean(deliverable(a.mflops, a.test[seed], grid)
                       - deliverable(b.mflops, b.test[seed], grid)))


def _early_exit_cost(a: ArmRuns, b: ArmRuns, seed: int) -> float:
  grid = budgets(a.mflops, b.mflops)
  return float(np.mean(early_exit_delivered(a.mflops, a.test[seed], a.curves[seed], grid)
                       - early_exit_delivered(b.mflops, b.test[seed], b.curves[seed], grid)))


@dataclasses.dataclass(frozen=True)
class Endpoint:
  """An endpoint: as a declaration states it, and ``a`` minus ``b`` on it for one seed."""
  text: str
  difference: Callable[[ArmRuns, ArmRuns, int], float]  # test accuracy, fraction


ENDPOINTS = {
    'first_exit': Endpoint('test accuracy of exit 1', _first_exit),
    'mean_over_exits': Endpoint('test accuracy, mean over the exits', _mean_over_exits),
    'deliverable_cost': Endpoint(
        f'test accuracy delivered at a budget (deepest exit whose cumulative FLOPs fit), mean '
        f'over {NUM_BUDGETS} log-spaced budgets spanning both networks\' range',
        _deliverable_cost),
    'early_exit_cost': Endpoint(
        'test accuracy at the same budgets taken as mean FLOPs per image, the operating point of '
        'most FLOPs that fits among each exit alone and the early-exit curve\'s points',
        _early_exit_cost),
}


def difference(endpoint: str, a: ArmRuns, b: ArmRuns, seed: int) -> float:
  """``a`` minus ``b`` on the named endpoint for one seed (test accuracy, fraction)."""
  if endpoint not in ENDPOINTS:
    raise ValueError(f'unknown endpoint {endpoint!r}; one of {tuple(ENDPOINTS)}')
  return ENDPOINTS[endpoint].difference(a, b, seed)
