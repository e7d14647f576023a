"""Each (model, method)'s own peak rate: a sweep on the selection seed, its grid grown at an end."""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from experiments.study.keys import RunKey
from experiments.study.store import Diverged, Outcome, Source


@dataclasses.dataclass(frozen=True)
class SweepRule:
  """The initial grid, how many times it may grow by a factor of 2, and the seed it runs on."""
  learning_rates: tuple[float, ...]
  max_extensions: int
  seed: int


@dataclasses.dataclass(frozen=True)
class SweepChoice:
  """A sweep so far: the chosen rate (None: a run still missing), every rate's score, and
  whether the chosen rate is still at an end of its grid (None while unfinished)."""
  rate: Optional[float]
  scores: dict[float, float]
  at_end: Optional[bool]

  def chosen_rate(self) -> float:
    """The chosen rate; a ValueError while a run of the sweep is missing."""
    if self.rate is None:
      raise ValueError('the sweep has not finished: a run of its grid is missing')
    return self.rate


def score(outcome: Outcome) -> float:
  """Validation accuracy, mean over exits; a diverged run scores lowest."""
  if isinstance(outcome, Diverged):
    return -math.inf
  return float(np.mean(outcome.validation_accuracy))


def at_end(rate: float, grid: Sequence[float]) -> bool:
  """Whether the rate lies at an end of its grid, so a rate beyond it may do better."""
  return len(grid) > 1 and rate in (min(grid), max(grid))


def sweep(rule: SweepRule, source: Source, model: str, method: str) -> SweepChoice:
  """The rate sweep of one (model, method): the best score wins, and while it sits at an end of
  the grid the grid grows that way (up to ``rule.max_extensions`` times)."""
  grid = sorted(rule.learning_rates)
  for extension in range(rule.max_extensions + 1):
    scores: dict[float, float] = {}
    for lr in grid:
      done = source(RunKey(model, method, lr, rule.seed))
      if done is None:
        return SweepChoice(None, scores, None)
      scores[lr] = score(done)
    best = max(scores, key=scores.__getitem__)
    end = at_end(best, grid)
    if not end or extension == rule.max_extensions:
      return SweepChoice(best, scores, end)
    grid = [best / 2, *grid] if best == grid[0] else [*grid, best * 2]
  raise AssertionError('unreachable')
