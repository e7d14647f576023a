"""A declared test: does OSGD's confirmed first-exit gain survive amortized weights?

  python -m experiments.confirm_amortized                # resumable: run it again to continue
  python -m experiments.confirm_amortized --report_only  # results/confirm_amortized.md
  python -m experiments.confirm_amortized --declaration  # what is tested, before any run
  python -m experiments.confirm_amortized --quick        # the same pipeline on digits (tests)

The confirmatory study's test 1 (:mod:`experiments.confirm`) found
``branched/osgd_global`` above summed losses on exit 1. That direction is
``sum_k w_k g_k``; :func:`anytime_jax.amortize` computes the weights ``w`` every
:data:`REFRESH_EVERY` steps only and trains on the weighted loss in between, at
about SGD's step cost. This family, declared before its runs, asks on seeds no
study has used (:data:`SEEDS`), with test 1's protocol (``branched``, the
first study's regime, each arm at the rate its own sweep chose on seed 0):
whether the amortized arm still beats summed losses, and whether it is
equivalent to the unamortized arm within :data:`MARGIN` points (TOST). The two
tests are corrected together (Bonferroni over 2).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, TypedDict

import numpy as np

from experiments import pilot as pilot_lib
from experiments import reproduce
from experiments.study import stats
from experiments.study.arms import Arm, RateChoice, arm_runs, chosen_rates
from experiments.study.cli import declared_family_main
from experiments.study.declared import (Primary, TestRow, arms_of, cells, finished,
                                        result_sentence, test_row)
from experiments.study.endpoints import ENDPOINTS
from experiments.study.keys import RunKey
from experiments.study.runner import Runner
from experiments.study.store import Finished, Store
from experiments.study.sweep import sweep

# results/drift.json (experiments/drift.py): on branched the weights' cosine and relative change
# after 8 and after 32 steps match those after 1, so refreshing every 8 loses little freshness
# and already brings the step to about SGD's cost (experiments/bench.py --amortized).
REFRESH_EVERY = 8
MARGIN = 1.0  # points of exit 1's test accuracy: below the smallest gain test 1 left possible
AMORTIZED = Arm('branched', f'osgd_global_every{REFRESH_EVERY}')
UNAMORTIZED = Arm('branched', 'osgd_global')
SUMMED = Arm('branched', 'sgd')
PRIMARIES = (
    Primary(f'Does OSGD still raise the branched network\'s first exit with its weights refreshed '
            f'every {REFRESH_EVERY} steps?', AMORTIZED, SUMMED, 'first_exit'),
    Primary(f'Is amortized OSGD equivalent to OSGD on the first exit, within ±{MARGIN:g} point?',
            AMORTIZED, UNAMORTIZED, 'first_exit', margin=MARGIN),
)
ARMS = arms_of(PRIMARIES)  # every arm the family needs, each once, in declaration order
# Descriptive, beside the family: does test 1 itself replicate on these seeds?
REPLICATION = Primary('Does unamortized OSGD raise the first exit on these seeds too?',
                      UNAMORTIZED, SUMMED, 'first_exit')
SEEDS = tuple(range(12, 20))  # 8 seeds neither study has used (the first 0-3, the confirmation 4-11)


@dataclasses.dataclass(frozen=True)
class Spec:
  """The study whose regime and sweeps this one shares, its seeds and the network's exits."""
  study: reproduce.Study
  seeds: tuple = SEEDS
  num_exits: int = 4


def full_spec() -> Spec:
  return Spec(reproduce.full_study())


def quick_spec() -> Spec:
  """Digits, a few steps, two seeds: the pipeline in minutes."""
  return Spec(reproduce.quick_study(), seeds=(12, 13), num_exits=3)


def declaration() -> str:
  """The declared family, as the report states it (written before any run)."""
  two_sided = stats.critical_t(len(SEEDS), len(PRIMARIES))
  one_sided = stats.one_sided_critical_t(len(SEEDS), len(PRIMARIES))
  lines = [f'Declared before the runs (`experiments/confirm_amortized.py`): {len(PRIMARIES)} '
           f'primary paired tests on seeds {SEEDS[0]}-{SEEDS[-1]} ({len(SEEDS)} pairs, never used '
           f'before), test 1\'s protocol (`branched`, each arm at the rate its own sweep chose on '
           f'seed 0), Bonferroni over both at a family-wise 5 %:', '',
           '| # | question | a − b | endpoint | test |', '|---|---|---|---|---|']
  for i, p in enumerate(PRIMARIES, 1):
    test = (f'equivalence (TOST): both one-sided t above {one_sided:.2f}' if p.margin else
            f'difference, two-sided: t beyond ±{two_sided:.2f}')
    lines.append(f'| {i} | {p.question} | `{p.a}` − `{p.b}` | {ENDPOINTS[p.endpoint].text} '
                 f'| {test} |')
  lines += ['', f'`{AMORTIZED.method}` is `osgd_global` through `aj.amortize(..., every='
            f'{REFRESH_EVERY})` (`--refresh_every {REFRESH_EVERY}`): the weights from the '
            f'per-exit gradients on every {REFRESH_EVERY}th step, the weighted loss\'s gradient '
            'on the others.']
  return '\n'.join(lines) + '\n'


def run(spec: Spec, runner: Runner) -> None:
  """Each arm's sweep (the two reused from the confirmation), then the seeds, seed by seed."""
  reg = pilot_lib.decided_regime(spec.study.pilot, runner.store)
  assert reg is not None
  source = runner.training(reg, lambda model: spec.num_exits)
  rates = {arm: sweep(spec.study.sweep_rule, source, arm.model, arm.method).chosen_rate()
           for arm in ARMS}
  for seed in spec.seeds:
    for arm in ARMS:
      source(RunKey(arm.model, arm.method, rates[arm], seed))


class Summary(TypedDict):
  """The report's results (``confirm_amortized.json``)."""
  seeds: list[int]
  primary: list[TestRow]
  rates: dict[str, RateChoice]  # arm -> its sweep's choice
  train_seconds: dict[str, Optional[float]]  # arm -> mean per finished run on the seeds
  replication: TestRow  # descriptive: the unamortized arm against summed losses, test 1 again


def summarize(spec: Spec, store: Store) -> Optional[Summary]:
  """Both tests on the seeds, each arm's rate, and its mean training time per run."""
  if pilot_lib.decided_regime(spec.study.pilot, store) is None:
    return None
  swept = {arm: sweep(spec.study.sweep_rule, store.outcome, arm.model, arm.method)
           for arm in ARMS}
  runs = {arm: arm_runs(store.outcome, arm, chosen.rate, spec.seeds)
          for arm, chosen in swept.items()}
  seconds = {}
  for arm, chosen in swept.items():
    if chosen.rate is not None:
      done = [store.outcome(RunKey(arm.model, arm.method, chosen.rate, s)) for s in spec.seeds]
      times = [o.train_seconds for o in done if isinstance(o, Finished)]
      seconds[str(arm)] = float(np.mean(times)) if times else None
  return {'seeds': list(spec.seeds),
          'primary': [test_row(p, runs[p.a], runs[p.b], num_tests=len(PRIMARIES))
                      for p in PRIMARIES],
          'rates': chosen_rates(swept),
          'train_seconds': seconds,
          'replication': test_row(REPLICATION, runs[UNAMORTIZED], runs[SUMMED],
                                  num_tests=len(PRIMARIES))}


def headline(summary: Summary) -> Optional[str]:
  """README's statement of both tests, once both have all their seeds (None before)."""
  rows, num_seeds = summary['primary'], len(summary['seeds'])
  if not all(finished(row, num_seeds) for row in rows):
    return None
  def interval_label(row: TestRow) -> str:
    if row.get('margin') is None:
      return '95 % interval:'
    # TOST reads the 1 - 2 alpha / m interval.
    return f'{100 * (1 - 2 * 0.05 / len(rows)):g} % interval, margin ±{row["margin"]:g}:'

  return '\n'.join(result_sentence(i, row, endpoint_text='', interval_label=interval_label(row))
                   for i, row in enumerate(rows, 1)) + '\n'


def markdown(summary: Optional[Summary]) -> str:
  text = declaration()
  if summary is None:
    return text + '\nThe first study\'s pilot has not fixed the regime: no results yet.\n'
  opening = headline(summary)
  text += '\n' + (opening or 'The tests have not all finished their seeds: no result is stated '
                  'yet.\n')
  lines = ['', 'Per test (ours; test accuracy of exit 1, points; the equivalence test\'s t is the '
           'smaller of its two one-sided t, its interval the one TOST reads):', '',
           '| # | a − b | endpoint | pairs | mean difference (points) '
           '| simultaneous interval | t | passes |', '|---|---|---|---|---|---|---|---|']
  for i, row in enumerate(summary['primary'], 1):
    lines.append(f"| {i} | `{row['a']}` − `{row['b']}` | {row['endpoint']} "
                 + cells(row, num_seeds=len(summary['seeds'])))
  for row in summary['primary']:
    if row.get('differences'):
      lines.append(f"\n`{row['a']}` − `{row['b']}` per seed (seeds "
                   f"{', '.join(map(str, row['seeds']))}): "
                   + ' / '.join(f'{d:+.2f}' for d in row['differences']) + '.')
  again = summary.get('replication')
  if again and again.get('differences'):
    above = sum(d > 0 for d in again['differences'])
    lines += ['', f"Descriptive (not a declared test): `{again['a']}` − `{again['b']}` on these "
              f"seeds, the confirmation's test 1 again: {again['mean']:+.2f} points, above zero "
              f"on {above} of {again['pairs']} seeds (per seed "
              + ' / '.join(f'{d:+.2f}' for d in again['differences']) + ').']
  lines += ['', 'Each arm\'s rate, chosen by its own sweep on seed 0: ' + ', '.join(
      f"`{arm}` {r['rate']:g}{' end' if r['at_end'] else ''}"
      for arm, r in summary['rates'].items()) + '.']
  times = {arm: s for arm, s in summary['train_seconds'].items() if s}
  if times:
    lines += ['', 'Mean training time per run on these seeds (ours, 2-core CPU, other work '
              'beside it, so for scale only): ' + ', '.join(
                  f'`{arm}` {s:.0f} s' for arm, s in times.items()) + '.']
  return text + '\n'.join(lines) + '\n'


def main(argv=None):
  declared_family_main(argv, description=__doc__.splitlines()[0], name='confirm_amortized',
                       declaration=declaration, full=full_spec, quick=quick_spec, run=run,
                       summarize=summarize,
                       report=lambda summary, spec, store: markdown(summary))


if __name__ == '__main__':
  main()
