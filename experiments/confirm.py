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

import argparse
import dataclasses
import json
import math
import pathlib
import sys
from typing import Optional

import jax
import numpy as np

from experiments import reproduce, stats, study_runs, train
from experiments.checkpoint import atomic_write


@dataclasses.dataclass(frozen=True)
class Arm:
  """One side of a comparison: a study model (a network, or ``independent_depth``) and method."""
  model: str
  method: str

  def __str__(self) -> str:
    return f'{self.model}/{self.method}'


ENDPOINTS = ('first_exit', 'mean_over_exits', 'deliverable_cost', 'early_exit_cost')


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
                       f'{ENDPOINTS}')


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
NUM_BUDGETS = 8  # the deliverable-cost grid: log-spaced over the range both networks cover
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
    lines.append(f'| {i} | {p.question} | `{p.a}` − `{p.b}` | {_ENDPOINT_TEXT[p.endpoint]} |')
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


_ENDPOINT_TEXT = {
    'first_exit': 'test accuracy of exit 1',
    'mean_over_exits': 'test accuracy, mean over the exits',
    'deliverable_cost': f'test accuracy delivered at a budget (deepest exit whose cumulative '
                        f'FLOPs fit), mean over {NUM_BUDGETS} log-spaced budgets spanning both '
                        'networks\' range',
    'early_exit_cost': 'test accuracy at the same budgets taken as mean FLOPs per image, '
                       'the operating point of most FLOPs that fits among each exit alone and '
                       'the early-exit curve\'s points',
}


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

def _depth_pilot_dir(out: pathlib.Path, width: int) -> pathlib.Path:
  return out / 'pilot' / f'width{width}' / 'independent_depth' / 'confirm'


def depth_pilot(spec: Confirm, out: pathlib.Path, data_dir: str, train_missing: bool
                ) -> dict[int, Optional[dict]]:
  """``independent_depth`` with SGD at each candidate width on seed 0, at the study's budget."""
  reg = reproduce.regime(spec.study, out)
  if reg is None:  # the first study's pilot has not fixed the regime yet
    return {width: None for width in spec.depth_widths}
  outcomes = {}
  for width in spec.depth_widths:
    config = dataclasses.replace(reg, fixed_widths=(('independent_depth', width),)).config(
        'independent_depth', 'sgd', DEPTH_PILOT_RATE, spec.study.selection_seed, spec.num_exits)
    workdir = _depth_pilot_dir(out, width)
    outcomes[width] = (study_runs.ensure(workdir, config, data_dir) if train_missing
                       else study_runs.outcome(workdir))
  return outcomes


def depth_width(spec: Confirm, outcomes: dict[int, Optional[dict]]) -> Optional[int]:
  """The largest candidate width at which capacity matters; the smallest if none; None unfinished."""
  if any(o is None for o in outcomes.values()):
    return None
  bound = spec.study.pilot.capacity_points
  gains = {w: 100 * (o['exits'][-1]['validation_accuracy'] - o['exits'][0]['validation_accuracy'])
           for w, o in outcomes.items() if 'diverged' not in o}
  matters = [w for w, g in gains.items() if g >= bound]
  return max(matters) if matters else min(spec.depth_widths)


def regime(spec: Confirm, out: pathlib.Path, width_of_depth: int,
           doubled: bool = False) -> study_runs.Regime:
  """The first study's regime with the depth models at their width (and twice the epochs)."""
  reg = reproduce.regime(spec.study, out)
  assert reg is not None
  reg = dataclasses.replace(reg, fixed_widths=(('nested_depth', width_of_depth),
                                               ('independent_depth', width_of_depth)))
  return dataclasses.replace(reg, epochs=2 * reg.epochs) if doubled else reg


# ----- the runs -----

def arms(spec: Confirm) -> list[Arm]:
  """Every arm a primary needs, each once, in declaration order."""
  found: list[Arm] = []
  for p in PRIMARIES:
    for arm in (p.a, p.b):
      if arm not in found:
        found.append(arm)
  return found


def _study_for(spec: Confirm) -> reproduce.Study:
  """The first study's sweep rules, over every model of the confirmation."""
  models = {m: spec.num_exits for m in ('nested_width', 'branched', 'nested_depth',
                                        'independent_depth')}
  return dataclasses.replace(spec.study, models=models)


def _doubled_dir(out: pathlib.Path, arm: Arm, lr: float, seed: int) -> pathlib.Path:
  return out / 'runs_doubled' / arm.model / arm.method / f'lr{lr:g}' / f'seed{seed}'


def run(spec: Confirm, out: pathlib.Path, data_dir: str) -> None:
  """Depth pilot, then the primary arms' sweeps, then the primary seeds (seed by seed, so that
  a stopped run leaves complete pairs), then the descriptive rows."""
  width = depth_width(spec, depth_pilot(spec, out, data_dir, train_missing=True))
  assert width is not None
  reg = regime(spec, out, width)
  study = _study_for(spec)
  primary = arms(spec)
  rates = {arm: reproduce.sweep(study, reg, out, arm.model, arm.method, data_dir,
                                train_missing=True)['rate'] for arm in primary}
  for seed in spec.seeds:
    for arm in primary:
      reproduce.study_run(study, reg, out, arm.model, arm.method, rates[arm], seed, data_dir, True)
  doubled = regime(spec, out, width, doubled=True)
  for arm in (PRIMARIES[0].a, PRIMARIES[0].b):
    for seed in spec.doubled_seeds:
      config = doubled.config(arm.model, arm.method, rates[arm], seed, spec.num_exits)
      study_runs.ensure(_doubled_dir(out, arm, rates[arm], seed), config, data_dir)
  for arm in spec.descriptive:
    rate = reproduce.sweep(study, reg, out, arm.model, arm.method, data_dir,
                           train_missing=True)['rate']
    for seed in spec.descriptive_seeds:
      reproduce.study_run(study, reg, out, arm.model, arm.method, rate, seed, data_dir, True)


# ----- the endpoints and the tests -----

def deliverable(mflops: list[float], accuracy: list[float], budgets: np.ndarray) -> np.ndarray:
  """Accuracy an anytime network delivers at each budget: its deepest exit that fits.

  ``mflops`` are the exits' cumulative costs (increasing); a budget below the
  first exit's cost delivers nothing (NaN).
  """
  fits = np.searchsorted(np.asarray(mflops), np.asarray(budgets), side='right') - 1
  return np.where(fits >= 0, np.asarray(accuracy)[np.maximum(fits, 0)], np.nan)


def early_exit_delivered(mflops: list[float], accuracy: list[float],
                         curve: list[tuple[float, float]], budgets: np.ndarray) -> np.ndarray:
  """Accuracy delivered at each budget of mean MFLOPs per image, early exit allowed.

  The operating points are every exit alone (``mflops``, ``accuracy``) and the
  early-exit curve's points (``curve``: ``(mean MFLOPs, accuracy)``, thresholds
  calibrated on validation); at a budget the network runs the point of most
  FLOPs that fits (chosen by cost, never by test accuracy).
  """
  points = sorted(zip([*mflops, *(f for f, _ in curve)], [*accuracy, *(a for _, a in curve)]))
  return deliverable([f for f, _ in points], [a for _, a in points], budgets)


def budgets(a_mflops: list[float], b_mflops: list[float], num: int = NUM_BUDGETS) -> np.ndarray:
  """``num`` log-spaced budgets from where both networks deliver to where neither adds more."""
  lo = max(a_mflops[0], b_mflops[0])
  hi = min(a_mflops[-1], b_mflops[-1])
  if not lo < hi:
    raise ValueError(f'the networks\' FLOPs ranges do not overlap: {a_mflops} and {b_mflops}')
  return np.geomspace(lo, hi, num)


def endpoint(primary: Primary, a: dict, b: dict, seed: int) -> float:
  """``a`` minus ``b`` on the primary's endpoint for one seed (test accuracy, fraction)."""
  if primary.endpoint == 'first_exit':
    return a['test'][seed][0] - b['test'][seed][0]
  if primary.endpoint == 'mean_over_exits':
    return float(np.mean(a['test'][seed]) - np.mean(b['test'][seed]))
  grid = budgets(a['mflops'], b['mflops'])

  def delivered(arm: dict) -> np.ndarray:
    if primary.endpoint == 'deliverable_cost':
      return deliverable(arm['mflops'], arm['test'][seed], grid)
    return early_exit_delivered(arm['mflops'], arm['test'][seed], arm['curves'][seed], grid)

  return float(np.mean(delivered(a) - delivered(b)))


def _arm_runs(out: pathlib.Path, arm: Arm, rate: Optional[float], seeds: tuple,
              run_dir=None) -> Optional[dict]:
  """The arm's runs at its swept ``rate`` on ``seeds``: test accuracies, FLOPs, diverged seeds."""
  if rate is None:
    return None
  outcomes = {s: study_runs.outcome(run_dir(out, arm, rate, s) if run_dir else
                                    reproduce.run_dir(out, arm.model, arm.method, rate, s))
              for s in seeds}
  done = {s: o for s, o in outcomes.items() if o is not None and 'diverged' not in o}
  first = next(iter(done.values()), None)
  return {'rate': rate,
          'test': {s: [e['test_accuracy'] for e in o['exits']] for s, o in done.items()},
          'mflops': [e['flops'] / 1e6 for e in first['exits']] if first else [],
          'curves': {s: [(p['flops'] / 1e6, p['accuracy']) for p in o.get('budgeted_batch', [])]
                     for s, o in done.items()},
          'diverged': sorted(s for s, o in outcomes.items() if o is not None and 'diverged' in o),
          'missing': sorted(s for s, o in outcomes.items() if o is None)}


def test_row(primary: Primary, a: Optional[dict], b: Optional[dict], num_tests: int) -> dict:
  """One primary test from the arms' runs: paired seeds, difference, interval, t, passed."""
  row = {'question': primary.question, 'a': str(primary.a), 'b': str(primary.b),
         'endpoint': primary.endpoint, 'pairs': 0, 'diverged': {}, 'missing': {}}
  if a is None or b is None:
    return row
  row['diverged'] = {str(primary.a): a['diverged'], str(primary.b): b['diverged']}
  row['missing'] = {str(primary.a): a['missing'], str(primary.b): b['missing']}
  seeds = sorted(set(a['test']) & set(b['test']))
  diffs = np.array([100 * endpoint(primary, a, b, s) for s in seeds])
  row.update(pairs=len(seeds), seeds=seeds, differences=diffs.tolist())
  if len(seeds) >= 2 and primary.margin is not None:
    row.update(mean=float(diffs.mean()), margin=primary.margin,
               **stats.equivalence(diffs, primary.margin, num_tests))
  elif len(seeds) >= 2:
    t = stats.paired_t(diffs)
    crit = stats.critical_t(len(seeds), num_tests)
    lo, hi = stats.interval(diffs, num_tests)
    row.update(mean=float(diffs.mean()), t=t, critical_t=crit, interval=[lo, hi],
               passed=bool(abs(t) >= crit))
  return row


def summarize(spec: Confirm, out: pathlib.Path) -> Optional[dict]:
  """Every primary test on the fresh seeds, and the same endpoints, descriptive, elsewhere."""
  width = depth_width(spec, depth_pilot(spec, out, '', train_missing=False))
  if width is None:
    return None
  reg = regime(spec, out, width)
  study = _study_for(spec)
  doubled = regime(spec, out, width, doubled=True)
  # Every arm's sweep, read once: the doubled runs take the 16-epoch sweep's rate, as run() does.
  swept = {arm: reproduce.sweep(study, reg, out, arm.model, arm.method)
           for arm in (*arms(spec), *spec.descriptive,
                       *(Arm(d.model, 'sgd') for d in spec.descriptive))}
  rate = {arm: chosen['rate'] for arm, chosen in swept.items()}
  summary: dict = {'depth_width': width, 'seeds': list(spec.seeds), 'primary': [],
                   'first_study': [], 'doubled': [], 'descriptive': [],
                   'rates': {str(arm): {'rate': chosen['rate'], 'at_end': chosen['at_end']}
                             for arm, chosen in swept.items() if chosen['rate'] is not None}}
  fresh = {arm: _arm_runs(out, arm, rate[arm], spec.seeds) for arm in arms(spec)}
  old = {arm: _arm_runs(out, arm, rate[arm], FIRST_STUDY_SEEDS) for arm in arms(spec)}
  for p in PRIMARIES:
    summary['primary'].append(test_row(p, fresh[p.a], fresh[p.b], num_tests=len(PRIMARIES)))
    summary['first_study'].append(test_row(p, old[p.a], old[p.b], num_tests=len(PRIMARIES)))
  p = PRIMARIES[0]
  for reg_of_row, run_dir in ((reg, None), (doubled, _doubled_dir)):  # the same seeds, 16 and 32
    runs = [_arm_runs(out, arm, rate[arm], spec.doubled_seeds, run_dir) for arm in (p.a, p.b)]
    row = test_row(p, *runs, num_tests=len(PRIMARIES))
    summary['doubled'].append(dict(row, epochs=reg_of_row.epochs))
  cost = next(p for p in PRIMARIES if p.endpoint == 'deliverable_cost')
  early = dataclasses.replace(cost, question=f'{cost.question}, early exit allowed',
                              endpoint='early_exit_cost')
  summary['descriptive'].append(test_row(early, fresh[early.a], fresh[early.b],
                                         num_tests=len(PRIMARIES)))
  for arm in spec.descriptive:
    versus = Primary(f'`{arm}` against `{arm.model}/sgd`, descriptive', arm,
                     Arm(arm.model, 'sgd'), 'mean_over_exits')
    runs = [_arm_runs(out, x, rate[x], spec.descriptive_seeds) for x in (arm, versus.b)]
    summary['descriptive'].append(test_row(versus, *runs, num_tests=len(PRIMARIES)))
  return summary


def headline(summary: dict) -> Optional[str]:
  """README's opening on the study: every primary test's result, once all have their seeds.

  None while a primary lacks a seed (finished or diverged): README states no result
  before the family is complete.
  """
  rows, num_seeds = summary['primary'], len(summary['seeds'])
  if not all(_finished(row, num_seeds) for row in rows):
    return None
  passed = [i for i, row in enumerate(rows, 1) if row['passed']]
  lines = [f'Of the {len(rows)} declared primary tests on {num_seeds} fresh seeds '
           f'(Bonferroni over all {len(rows)}), {len(passed)} passed'
           + (f' ({", ".join(map(str, passed))})' if passed else '') + ':', '']
  for i, row in enumerate(rows, 1):
    lo, hi = row['interval']
    diverged = len(_diverged_seeds(row))
    lines.append(
        f"{i}. **{row['question']}** `{row['a']}` − `{row['b']}`, "
        f"{_ENDPOINT_TEXT[row['endpoint']]}: {row['mean']:+.2f} points "
        f"(simultaneous 95 % interval {lo:+.2f} to {hi:+.2f}; t = {_t_text(row['t'])} over "
        f"{row['pairs']} pairs{f', {diverged} diverged' if diverged else ''}, critical "
        f"{row['critical_t']:.2f}): {'passed' if row['passed'] else 'not passed'}.")
  return '\n'.join(lines) + '\n'


def _t_text(t: float) -> str:
  return 'n/a (no spread)' if math.isnan(t) else f'{t:+.2f}'


def _diverged_seeds(row: dict) -> set:
  return {s for seeds in row['diverged'].values() for s in seeds}


def _finished(row: dict, num_seeds: int) -> bool:
  """Whether every declared seed of a test has run (finished or diverged)."""
  return row['pairs'] + len(_diverged_seeds(row)) >= num_seeds and 'mean' in row


def _cells(row: dict, num_seeds: Optional[int] = None) -> str:
  """A row's table cells; with ``num_seeds`` (a declared test) no verdict before them all."""
  diverged = sum(len(v) for v in row['diverged'].values())
  failures = f" (+{diverged} diverged: {row['diverged']})" if diverged else ''
  if 'mean' not in row:
    return f"| {row['pairs']}{failures} | | | | |"
  lo, hi = row['interval']
  verdict = 'yes' if row['passed'] else 'no'
  if num_seeds is not None and not _finished(row, num_seeds):
    verdict = f'pending (declared on {num_seeds} seeds)'
  return (f"| {row['pairs']}{failures} | {row['mean']:+.2f} | {lo:+.2f} to {hi:+.2f} "
          f"| {_t_text(row['t'])} | {verdict} |")


def markdown(summary: Optional[dict]) -> str:
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
                 + _cells(row, num_seeds=len(summary['seeds'])))
  lines += ['', f'The same endpoints on the first study\'s seeds {list(FIRST_STUDY_SEEDS)} '
            '(descriptive: these seeds generated the hypotheses):', '', *header]
  for i, row in enumerate(summary['first_study'], 1):
    lines.append(f"| {i} | `{row['a']}` − `{row['b']}` | {row['endpoint']} " + _cells(row))
  lines += ['', 'Descriptive: the branched primary on its first seeds at 16 and at twice the '
            'epochs, the equal-cost primary '
            f'with early exit allowed ({_ENDPOINT_TEXT["early_exit_cost"]}), and the other OSGD '
            'variants against summed losses (interval and "passes" at the family\'s level, for '
            'scale only):', '', *header]
  for row in summary['doubled']:
    lines.append(f"| 1, {row['epochs']} epochs | `{row['a']}` − `{row['b']}` | {row['endpoint']} "
                 + _cells(row))
  for row in summary['descriptive']:
    lines.append(f"| – | `{row['a']}` − `{row['b']}` | {row['endpoint']} " + _cells(row))
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


def compute_markdown(spec: Confirm, out: pathlib.Path) -> str:
  """This study's own compute, per part: what it reuses from the first study is not counted."""
  first = spec.study
  fresh = {f'seed{s}' for s in spec.seeds}
  primary = {(arm.model, arm.method) for arm in arms(spec)}
  swept = primary | {(arm.model, arm.method) for arm in spec.descriptive}

  def primary_seed(part: tuple) -> Optional[str]:
    return part[4] if part[0] == 'runs' and part[4] in fresh and part[1:3] in primary else None

  def part_of(part: tuple) -> Optional[str]:
    if part[0] == 'pilot' and 'confirm' in part:
      return 'depth pilot'
    if part[0] == 'runs_doubled':
      return 'twice the epochs'
    if primary_seed(part):
      return 'fresh seeds'
    if part[0] == 'runs' and part[4] in fresh:
      return 'descriptive methods'
    if (part[0] == 'runs' and part[4] == f'seed{first.selection_seed}' and part[1:3] in swept
        and not (part[1] in first.all_models and part[2] in first.methods_of(part[1]))):
      return 'new sweeps'
    return None

  per_seed = reproduce.compute_parts(out, primary_seed)
  seed_line = ('Per fresh seed (every primary arm, same caveat): ' + ', '.join(
      f'seed {s} {per_seed[f"seed{s}"][1] / 60:.0f} min' for s in spec.seeds
      if f'seed{s}' in per_seed) + '.\n' if per_seed else '')
  return reproduce.summed_compute(out, part_of) + seed_line


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--out', default=None, help='default: results/ (results/quick with --quick)')
  parser.add_argument('--data_dir', default=train.data.DEFAULT_DATA_DIR)
  parser.add_argument('--quick', action='store_true', help='the same pipeline on digits, minutes')
  parser.add_argument('--report_only', action='store_true')
  parser.add_argument('--declaration', action='store_true', help='print the declared tests')
  args = parser.parse_args(argv)
  if args.declaration:
    print(declaration())
    return
  spec = quick_confirm() if args.quick else full_confirm()
  out = pathlib.Path(args.out or ('results/quick' if args.quick else 'results'))
  out.mkdir(parents=True, exist_ok=True)
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update('jax_compilation_cache_dir', str(pathlib.Path(args.data_dir) / 'xla_cache'))
  if not args.report_only:
    if reproduce.regime(spec.study, out) is None:
      print('running the first study\'s pilot, which fixes the regime', file=sys.stderr)
      reproduce.pilot_lib.run(spec.study.pilot, out, args.data_dir)
    run(spec, out, args.data_dir)
  summary = summarize(spec, out)
  text = markdown(summary) + compute_markdown(spec, out)
  atomic_write(out / 'confirm.md', text)
  atomic_write(out / 'confirm.json', json.dumps(summary, indent=1))
  print(text)


if __name__ == '__main__':
  main()
