"""The confirmatory study: the first study's hypotheses, declared, then tested on fresh seeds.

  python -m experiments.confirm                 # resumable: run it again to continue
  python -m experiments.confirm --report_only   # results/confirm.md from the finished runs
  python -m experiments.confirm --declaration   # prints what is tested, before any run
  python -m experiments.confirm --quick         # the same pipeline on digits (tests)

The first study (:mod:`experiments.reproduce`, seeds 1-3) generated hypotheses;
it could confirm none. This study fixes, before its runs, a family of
:data:`PRIMARIES`: each one paired test with one endpoint, all corrected
together (Bonferroni over the whole family), on seeds the first study never
used (:data:`SEEDS`). It keeps the first study's regime (the pilot's fixed
budget: Fashion-MNIST, 10,000 training images, 16 epochs) and protocol (each
(model, method) at the rate its own sweep chose on seed 0, which is never
reported). New here: the depth-nested network (``nested_depth``, the paper's
figure) with the independent networks grown in depth as its reference, at a
width its own pilot measured, and equal cost as an anytime network delivers
it: the accuracy of the deepest exit whose cumulative FLOPs fit the budget.
Everything else in the report is descriptive.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, TypedDict


from experiments import pilot as pilot_lib
from experiments import reproduce, train
from experiments.study import stats
from experiments.study.arms import Arm, RateChoice, arm_runs, chosen_rates
from experiments.study.cli import declared_family_main
from experiments.study.compute import compute_line
from experiments.study.declared import (Primary, TestRow, arms_of, cells, finished,
                                        result_sentence, test_row)
from experiments.study.endpoints import ENDPOINTS
from experiments.study.keys import DepthPilotKey, Key, RunKey
from experiments.study.regime import Regime
from experiments.study.runner import Runner
from experiments.study.store import Finished, Outcome, Store
from experiments.study.sweep import sweep

PRIMARIES = (
    Primary('Does OSGD raise the branched network\'s first exit? (the first study\'s hypothesis)',
            Arm('branched', 'osgd_global'), Arm('branched', 'sgd'), 'first_exit'),
    Primary('Does OSGD change the width-nested network?',
            Arm('nested_width', 'osgd_global'), Arm('nested_width', 'sgd'), 'mean_over_exits'),
    Primary('Does OSGD change the depth-nested network?',
            Arm('nested_depth', 'osgd_global'), Arm('nested_depth', 'sgd'), 'mean_over_exits'),
    Primary('Width nesting against independent networks of the same width',
            Arm('nested_width', 'sgd'), Arm('independent', 'sgd'), 'mean_over_exits'),
    Primary('Depth nesting against independent networks grown in depth',
            Arm('nested_depth', 'sgd'), Arm('independent_depth', 'sgd'), 'mean_over_exits'),
    Primary('Width nesting against branching at equal deliverable cost',
            Arm('nested_width', 'sgd'), Arm('branched', 'sgd'), 'deliverable_cost'),
)
ARMS = arms_of(PRIMARIES)  # every arm a primary needs, each once, in declaration order
SEEDS = tuple(range(4, 12))  # 8 seeds the first study never used
FIRST_STUDY_SEEDS = (1, 2, 3)  # shown beside, descriptive
DESCRIPTIVE_METHODS = ('osgd', 'osgd_exits')  # swept, run on the first DESCRIPTIVE_SEEDS
DESCRIPTIVE_ARMS = tuple(Arm(model, method) for model in ('branched', 'nested_width')
                         for method in DESCRIPTIVE_METHODS)
# Declared too, then cut for the compute budget (2026-12-01: the study had used 20 h of about 7;
# the issue cuts descriptive rows first): each needs its own sweep at ~10 min a run.
CUT_ARMS = tuple(Arm('nested_depth', method) for method in DESCRIPTIVE_METHODS)
DESCRIPTIVE_SEEDS = SEEDS[:3]
DOUBLED_SEEDS = SEEDS[:3]  # the branched primary at twice the epochs, descriptive
DEPTH_WIDTHS = (2, 4)  # nested_depth's candidate base widths (its pilot picks one)
DEPTH_PILOT_RATE = 0.1  # as the first pilot


def declaration(num_primaries: int = len(PRIMARIES)) -> str:
  """The declared family, as the report and README state it (written before any run)."""
  crit = stats.critical_t(len(SEEDS), num_primaries)
  lines = [f'Declared before the runs (`experiments/confirm.py`): {num_primaries} primary paired '
           f'tests, each on seeds {SEEDS[0]}-{SEEDS[-1]} ({len(SEEDS)} pairs, never used before), '
           f'Bonferroni over the whole family at a family-wise 5 % (two-sided critical |t| = '
           f'{crit:.2f} with {len(SEEDS)} pairs):', '',
           '| # | question | a − b | endpoint |', '|---|---|---|---|']
  for i, p in enumerate(PRIMARIES[:num_primaries], 1):
    lines.append(f'| {i} | {p.question} | `{p.a}` − `{p.b}` | {ENDPOINTS[p.endpoint].text} |')
  lines += ['', f'Everything else is descriptive: the first study\'s seeds '
            f'{list(FIRST_STUDY_SEEDS)}, the methods {", ".join(f"`{m}`" for m in DESCRIPTIVE_METHODS)} '
            f'on {" and ".join(f"`{m}`" for m in dict.fromkeys(a.model for a in DESCRIPTIVE_ARMS))} '
            f'(seeds {list(DESCRIPTIVE_SEEDS)}), and the branched primary at twice the epochs '
            f'(seeds {list(DOUBLED_SEEDS)}); {", ".join(f"`{arm}`" for arm in CUT_ARMS)} were '
            'declared too and then cut for the compute budget (2026-12-01, descriptive rows first). '
            '`nested_depth` and `independent_depth` run at the '
            f'largest base width of {list(DEPTH_WIDTHS)} at which the independent networks grown in '
            'depth differ by at least the first pilot\'s capacity bound (their own pilot, seed 0).']
  return '\n'.join(lines) + '\n'


@dataclasses.dataclass(frozen=True)
class Confirm:
  """Where the runs go and how big they are (the full study, or the quick one for tests)."""
  study: reproduce.Study  # the first study: its pilot fixes the regime, its sweeps are reused
  seeds: tuple = SEEDS
  descriptive: tuple = DESCRIPTIVE_ARMS
  descriptive_seeds: tuple = DESCRIPTIVE_SEEDS
  doubled_seeds: tuple = DOUBLED_SEEDS
  depth_widths: tuple = DEPTH_WIDTHS
  num_exits: int = 4


def full_confirm() -> Confirm:
  return Confirm(reproduce.full_study())


def quick_confirm() -> Confirm:
  """Digits, a few steps, two seeds: the pipeline in minutes."""
  return Confirm(reproduce.quick_study(), seeds=(4, 5),
                 descriptive=(Arm('branched', 'osgd_exits'),), descriptive_seeds=(4,),
                 doubled_seeds=(4,), depth_widths=(2,), num_exits=3)


# ----- the regime and the depth pilot -----

def _depth_pilot_config(spec: Confirm, reg: Regime, width: int) -> train.Config:
  """``independent_depth`` with SGD at a candidate width on seed 0, at the study's budget."""
  return dataclasses.replace(reg, fixed_widths=(('independent_depth', width),)).config(
      'independent_depth', 'sgd', DEPTH_PILOT_RATE, spec.study.selection_seed, spec.num_exits)


def run_depth_pilot(spec: Confirm, runner: Runner) -> None:
  """Trains the depth pilot at every candidate width (the first study's pilot has decided)."""
  reg = pilot_lib.decided_regime(spec.study.pilot, runner.store)
  assert reg is not None
  for width in spec.depth_widths:
    runner.ensure(DepthPilotKey(width), _depth_pilot_config(spec, reg, width))


def depth_pilot(spec: Confirm, store: Store) -> dict[int, Optional[Outcome]]:
  """The depth pilot's outcome at each candidate width (None: not run, or no regime yet)."""
  if pilot_lib.decided_regime(spec.study.pilot, store) is None:
    return {width: None for width in spec.depth_widths}
  return {width: store.outcome(DepthPilotKey(width)) for width in spec.depth_widths}


def depth_width(spec: Confirm, outcomes: dict[int, Optional[Outcome]]) -> Optional[int]:
  """The largest candidate width at which capacity matters; the smallest if none; None unfinished."""
  if any(o is None for o in outcomes.values()):
    return None
  bound = spec.study.pilot.capacity_points
  gains = {w: 100 * (o.validation_accuracy[-1] - o.validation_accuracy[0])
           for w, o in outcomes.items() if isinstance(o, Finished)}
  matters = [w for w, g in gains.items() if g >= bound]
  return max(matters) if matters else min(spec.depth_widths)


def regime(spec: Confirm, store: Store, width_of_depth: int) -> Regime:
  """The first study's regime with the depth models at their width."""
  reg = pilot_lib.decided_regime(spec.study.pilot, store)
  assert reg is not None
  return dataclasses.replace(reg, fixed_widths=(('nested_depth', width_of_depth),
                                                ('independent_depth', width_of_depth)))


# ----- the runs -----

def run(spec: Confirm, runner: Runner) -> None:
  """Depth pilot, then the primary arms' sweeps, then the primary seeds (seed by seed, so that
  a stopped run leaves complete pairs), then the descriptive rows."""
  run_depth_pilot(spec, runner)
  width = depth_width(spec, depth_pilot(spec, runner.store))
  assert width is not None
  source = runner.training(regime(spec, runner.store, width), lambda model: spec.num_exits)
  rule = spec.study.sweep_rule
  rates = {arm: sweep(rule, source, arm.model, arm.method).chosen_rate() for arm in ARMS}
  for seed in spec.seeds:
    for arm in ARMS:
      source(RunKey(arm.model, arm.method, rates[arm], seed))
  for arm in (PRIMARIES[0].a, PRIMARIES[0].b):
    for seed in spec.doubled_seeds:
      source(RunKey(arm.model, arm.method, rates[arm], seed, doubled=True))
  for arm in spec.descriptive:
    rate = sweep(rule, source, arm.model, arm.method).chosen_rate()
    for seed in spec.descriptive_seeds:
      source(RunKey(arm.model, arm.method, rate, seed))


# ----- the tests -----

class Summary(TypedDict):
  """The report's results (``confirm.json``): every test's row, each arm's rate."""
  depth_width: int
  seeds: list[int]
  primary: list[TestRow]  # on the fresh seeds
  first_study: list[TestRow]  # the same tests on the first study's seeds
  doubled: list[TestRow]  # test 1 on its first seeds at the study's epochs and at twice them
  descriptive: list[TestRow]
  rates: dict[str, RateChoice]  # arm -> its sweep's choice


def summarize(spec: Confirm, store: Store) -> Optional[Summary]:
  """Every primary test on the fresh seeds, and the same endpoints, descriptive, elsewhere."""
  width = depth_width(spec, depth_pilot(spec, store))
  if width is None:
    return None
  reg = regime(spec, store, width)
  rule = spec.study.sweep_rule
  # Every arm's sweep, read once: the doubled runs take the 16-epoch sweep's rate, as run() does.
  swept = {arm: sweep(rule, store.outcome, arm.model, arm.method)
           for arm in (*ARMS, *spec.descriptive,
                       *(Arm(d.model, 'sgd') for d in spec.descriptive))}
  rate = {arm: chosen.rate for arm, chosen in swept.items()}
  summary: Summary = {
      'depth_width': width, 'seeds': list(spec.seeds), 'primary': [], 'first_study': [],
      'doubled': [], 'descriptive': [],
      'rates': chosen_rates(swept)}
  fresh = {arm: arm_runs(store.outcome, arm, rate[arm], spec.seeds) for arm in ARMS}
  old = {arm: arm_runs(store.outcome, arm, rate[arm], FIRST_STUDY_SEEDS) for arm in ARMS}
  for p in PRIMARIES:
    summary['primary'].append(test_row(p, fresh[p.a], fresh[p.b], num_tests=len(PRIMARIES)))
    summary['first_study'].append(test_row(p, old[p.a], old[p.b], num_tests=len(PRIMARIES)))
  p = PRIMARIES[0]
  for doubled in (False, True):  # the same seeds, at the study's epochs and at twice them
    a, b = (arm_runs(store.outcome, arm, rate[arm], spec.doubled_seeds, doubled)
            for arm in (p.a, p.b))
    row = test_row(p, a, b, num_tests=len(PRIMARIES))
    row['epochs'] = (reg.doubled() if doubled else reg).epochs
    summary['doubled'].append(row)
  cost = next(p for p in PRIMARIES if p.endpoint == 'deliverable_cost')
  early = dataclasses.replace(cost, question=f'{cost.question}, early exit allowed',
                              endpoint='early_exit_cost')
  summary['descriptive'].append(test_row(early, fresh[early.a], fresh[early.b],
                                         num_tests=len(PRIMARIES)))
  for arm in spec.descriptive:
    versus = Primary(f'`{arm}` against `{arm.model}/sgd`, descriptive', arm,
                     Arm(arm.model, 'sgd'), 'mean_over_exits')
    a, b = (arm_runs(store.outcome, x, rate[x], spec.descriptive_seeds) for x in (arm, versus.b))
    summary['descriptive'].append(test_row(versus, a, b, num_tests=len(PRIMARIES)))
  return summary


def headline(summary: Summary) -> Optional[str]:
  """README's opening on the study: every primary test's result, once all have their seeds.

  None while a primary lacks a seed (finished or diverged): README states no result
  before the family is complete.
  """
  rows, num_seeds = summary['primary'], len(summary['seeds'])
  if not all(finished(row, num_seeds) for row in rows):
    return None
  passed = [i for i, row in enumerate(rows, 1) if row['passed']]
  lines = [f'Of the {len(rows)} declared primary tests on {num_seeds} fresh seeds '
           f'(Bonferroni over all {len(rows)}), {len(passed)} passed'
           + (f' ({", ".join(map(str, passed))})' if passed else '') + ':', '']
  lines += [result_sentence(i, row, endpoint_text=f", {ENDPOINTS[row['endpoint']].text}",
                            interval_label='95 % interval') for i, row in enumerate(rows, 1)]
  return '\n'.join(lines) + '\n'


def markdown(summary: Optional[Summary]) -> str:
  text = declaration()
  if summary is None:
    return text + '\nThe pilots have not finished: no results yet.\n'
  opening = headline(summary)
  text += ('\n' + opening if opening else
           '\nThe primary tests have not all finished their seeds: no result is stated yet.\n')
  header = ['| # | a − b | endpoint | pairs | mean difference (points) '
            '| simultaneous 95 % interval | t | passes |', '|---|---|---|---|---|---|---|---|']
  lines = ['', f"`nested_depth` runs at base width {summary['depth_width']} (its pilot).", '',
           'Primary tests on the fresh seeds (ours; test accuracy, points; a diverged run is '
           'counted, and its seed leaves the pair):', '', *header]
  for i, row in enumerate(summary['primary'], 1):
    lines.append(f"| {i} | `{row['a']}` − `{row['b']}` | {row['endpoint']} "
                 + cells(row, num_seeds=len(summary['seeds'])))
  lines += ['', f'The same endpoints on the first study\'s seeds {list(FIRST_STUDY_SEEDS)} '
            '(descriptive: these seeds generated the hypotheses):', '', *header]
  for i, row in enumerate(summary['first_study'], 1):
    lines.append(f"| {i} | `{row['a']}` − `{row['b']}` | {row['endpoint']} " + cells(row))
  lines += ['', 'Descriptive: the branched primary on its first seeds at 16 and at twice the '
            'epochs, the equal-cost primary '
            f'with early exit allowed ({ENDPOINTS["early_exit_cost"].text}), and the other OSGD '
            'variants against summed losses (interval and "passes" at the family\'s level, for '
            'scale only):', '', *header]
  for row in summary['doubled']:
    lines.append(f"| 1, {row['epochs']} epochs | `{row['a']}` − `{row['b']}` | {row['endpoint']} "
                 + cells(row))
  for row in summary['descriptive']:
    lines.append(f"| – | `{row['a']}` − `{row['b']}` | {row['endpoint']} " + cells(row))
  if summary.get('rates'):
    lines += ['', 'Each arm\'s rate, chosen by its own sweep on seed 0 ("end": still at an end of '
              'its grid after the last extension): ' + ', '.join(
                  f"`{arm}` {r['rate']:g}{' end' if r['at_end'] else ''}"
                  for arm, r in summary['rates'].items()) + '.']
  per_seed = [f"{row['epochs']} epochs " + ' / '.join(f'{d:+.2f}' for d in row['differences'])
              for row in summary['doubled'] if row.get('differences')]
  if per_seed:
    lines += ['', f"Test 1 per seed at both budgets (points, seeds "
              f"{', '.join(map(str, summary['doubled'][0]['seeds']))}): "
              + '; '.join(per_seed) + '.']
  return text + '\n'.join(lines) + '\n'


def compute_markdown(spec: Confirm, store: Store) -> str:
  """This study's own compute, per part: what it reuses from the first study is not counted."""
  first = spec.study
  primary = {(arm.model, arm.method) for arm in ARMS}
  swept = primary | {(arm.model, arm.method) for arm in spec.descriptive}

  def primary_seed(key: Key) -> Optional[str]:
    if (isinstance(key, RunKey) and not key.doubled and key.seed in spec.seeds
        and (key.model, key.method) in primary):
      return str(key.seed)
    return None

  def part_of(key: Key) -> Optional[str]:
    if isinstance(key, DepthPilotKey):
      return 'depth pilot'
    if not isinstance(key, RunKey):
      return None
    if key.doubled:
      return 'twice the epochs'
    if primary_seed(key):
      return 'fresh seeds'
    if key.seed in spec.seeds:
      return 'descriptive methods'
    if (key.seed == first.selection_seed and (key.model, key.method) in swept
        and not (key.model in first.all_models and key.method in first.methods_of(key.model))):
      return 'new sweeps'
    return None

  per_seed = store.compute_parts(primary_seed)
  seed_line = ('Per fresh seed (every primary arm, same caveat): ' + ', '.join(
      f'seed {s} {per_seed[str(s)].seconds / 60:.0f} min' for s in spec.seeds
      if str(s) in per_seed) + '.\n' if per_seed else '')
  return compute_line(store.compute_parts(part_of)) + seed_line


def main(argv=None):
  declared_family_main(argv, description=__doc__.splitlines()[0], name='confirm',
                       declaration=declaration, full=full_confirm, quick=quick_confirm, run=run,
                       summarize=summarize,
                       report=lambda summary, spec, store: markdown(summary) + compute_markdown(spec, store))


if __name__ == '__main__':
  main()
