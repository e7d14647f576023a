"""The sides of a declared comparison: each arm, its chosen rate, its runs as tests read them."""

from __future__ import annotations

import dataclasses
from typing import Iterable, Optional, TypedDict

from experiments.study.keys import RunKey
from experiments.study.store import Diverged, Finished, Source
from experiments.study.sweep import SweepChoice


@dataclasses.dataclass(frozen=True)
class Arm:
  """One side of a comparison: a study model (a network, or ``independent_depth``) and method."""
  model: str
  method: str

  def __str__(self) -> str:
    return f'{self.model}/{self.method}'


@dataclasses.dataclass(frozen=True)
class ArmRuns:
  """An arm's runs at its swept rate on a family's seeds (accuracies as fractions)."""
  test: dict[int, list[float]]  # seed -> test accuracy per exit, finished runs only
  mflops: list[float]  # cumulative per exit (empty while no run has finished)
  curves: dict[int, list[tuple[float, float]]]  # seed -> early-exit (mean MFLOPs, accuracy)
  diverged: list[int]
  missing: list[int]


class RateChoice(TypedDict):
  """An arm's finished sweep, as a report's JSON holds it."""
  rate: float
  at_end: Optional[bool]


def chosen_rates(swept: dict[Arm, SweepChoice]) -> dict[str, RateChoice]:
  """Each arm's chosen rate, for the arms whose sweep has finished."""
  return {str(arm): {'rate': chosen.rate, 'at_end': chosen.at_end}
          for arm, chosen in swept.items() if chosen.rate is not None}


def arm_runs(source: Source, arm: Arm, rate: Optional[float], seeds: Iterable[int],
             doubled: bool = False) -> Optional[ArmRuns]:
  """The arm's runs at ``rate`` (None: its sweep has not chosen one) on ``seeds``."""
  if rate is None:
    return None
  outcomes = {s: source(RunKey(arm.model, arm.method, rate, s, doubled)) for s in seeds}
  done = {s: o for s, o in outcomes.items() if isinstance(o, Finished)}
  first = next(iter(done.values()), None)
  return ArmRuns(
      test={s: o.test_accuracy for s, o in done.items()},
      mflops=first.mflops if first else [],
      curves={s: [(p['flops'] / 1e6, p['accuracy']) for p in o.budgeted_batch]
              for s, o in done.items()},
      diverged=sorted(s for s, o in outcomes.items() if isinstance(o, Diverged)),
      missing=sorted(s for s, o in outcomes.items() if o is None))
