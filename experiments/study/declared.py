"""Declared tests: a family fixed before its runs, each test's row, and its table cells.

A :class:`Primary` names two arms and an endpoint (and, for an equivalence
test, a margin); :func:`test_row` pairs the arms' seeds and runs the family's
:func:`~experiments.study.stats.paired_test`, Bonferroni over the family.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Optional, TypedDict

import numpy as np

from experiments.study import stats
from experiments.study.arms import Arm, ArmRuns
from experiments.study.endpoints import ENDPOINTS, difference


@dataclasses.dataclass(frozen=True)
class Primary:
  """A declared paired test: ``a`` minus ``b`` on ``endpoint``, test accuracy in points.

  Without ``margin`` a two-sided test of a difference; with one, an equivalence
  test (TOST) that the difference lies within ± ``margin`` points.
  """
  question: str
  a: Arm
  b: Arm
  endpoint: str
  margin: Optional[float] = None

  def __post_init__(self):
    if self.endpoint not in ENDPOINTS:
      raise ValueError(f'unknown endpoint {self.endpoint!r}; a declared test takes one of '
                       f'{tuple(ENDPOINTS)}')
    if self.margin is not None and self.margin <= 0:
      raise ValueError(f'an equivalence margin must be positive, got {self.margin}')


def arms_of(primaries: Iterable[Primary]) -> list[Arm]:
  """Every arm a family's tests need, each once, in declaration order."""
  return list(dict.fromkeys(arm for p in primaries for arm in (p.a, p.b)))


class TestRow(TypedDict, total=False):
  """A declared test's result as the reports write it (JSON): arms, seeds, statistics."""
  question: str
  a: str
  b: str
  endpoint: str
  pairs: int  # seeds where both arms finished
  diverged: dict[str, list[int]]  # arm -> seeds whose run diverged
  missing: dict[str, list[int]]  # arm -> seeds not run yet
  seeds: list[int]
  differences: list[float]  # points, per paired seed
  # From two pairs on: the paired test's fields (stats.PairedTest; margin: TOST only).
  mean: float
  margin: float
  t: float
  critical_t: float
  interval: list[float]
  passed: bool
  epochs: int  # set by a report that runs a test at more than one length


def test_row(primary: Primary, a: Optional[ArmRuns], b: Optional[ArmRuns],
             num_tests: int) -> TestRow:
  """One declared test from its arms' runs: paired seeds, differences, and its paired test."""
  row: TestRow = {'question': primary.question, 'a': str(primary.a), 'b': str(primary.b),
                  'endpoint': primary.endpoint, 'pairs': 0, 'diverged': {}, 'missing': {}}
  if a is None or b is None:
    return row
  row['diverged'] = {str(primary.a): a.diverged, str(primary.b): b.diverged}
  row['missing'] = {str(primary.a): a.missing, str(primary.b): b.missing}
  seeds = sorted(set(a.test) & set(b.test))
  diffs = np.array([100 * difference(primary.endpoint, a, b, s) for s in seeds])
  row['pairs'], row['seeds'], row['differences'] = len(seeds), seeds, diffs.tolist()
  if len(seeds) >= 2:
    test = stats.paired_test(diffs, num_tests, primary.margin)
    row['mean'] = test.mean
    if test.margin is not None:
      row['margin'] = test.margin
    row['t'], row['critical_t'] = test.t, test.critical_t
    row['interval'], row['passed'] = list(test.interval), test.passed
  return row


def diverged_seeds(row: TestRow) -> set[int]:
  return {s for seeds in row['diverged'].values() for s in seeds}


def finished(row: TestRow, num_seeds: int) -> bool:
  """Whether every declared seed of a test has run (finished or diverged)."""
  return row['pairs'] + len(diverged_seeds(row)) >= num_seeds and 'mean' in row


def t_text(t: float) -> str:
  return 'n/a (no spread)' if math.isnan(t) else f'{t:+.2f}'


def result_sentence(i: int, row: TestRow, *, endpoint_text: str, interval_label: str) -> str:
  """A finished test's result as README states it: ``i. **question** `a` − `b`...: verdict.``

  ``endpoint_text`` follows the arms (``', test accuracy of exit 1'``, or empty);
  ``interval_label`` names the interval (``'95 % interval'``).
  """
  lo, hi = row['interval']
  diverged = len(diverged_seeds(row))
  if row.get('margin') is not None:
    verdict = 'equivalent' if row['passed'] else 'equivalence not shown'
  else:
    verdict = 'passed' if row['passed'] else 'not passed'
  return (f"{i}. **{row['question']}** `{row['a']}` − `{row['b']}`{endpoint_text}: "
          f"{row['mean']:+.2f} points (simultaneous {interval_label} {lo:+.2f} to {hi:+.2f}; "
          f"t = {t_text(row['t'])} over {row['pairs']} pairs"
          f"{f', {diverged} diverged' if diverged else ''}, critical {row['critical_t']:.2f}): "
          f"{verdict}.")


def cells(row: TestRow, num_seeds: Optional[int] = None) -> str:
  """A row's table cells; with ``num_seeds`` (a declared test) no verdict before them all."""
  diverged = sum(len(v) for v in row['diverged'].values())
  failures = f" (+{diverged} diverged: {row['diverged']})" if diverged else ''
  if 'mean' not in row:
    return f"| {row['pairs']}{failures} | | | | |"
  lo, hi = row['interval']
  verdict = 'yes' if row['passed'] else 'no'
  if num_seeds is not None and not finished(row, num_seeds):
    verdict = f'pending (declared on {num_seeds} seeds)'
  return (f"| {row['pairs']}{failures} | {row['mean']:+.2f} | {lo:+.2f} to {hi:+.2f} "
          f"| {t_text(row['t'])} | {verdict} |")
