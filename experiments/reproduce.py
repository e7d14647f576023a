"""The study: OSGD and nested networks, measured where neither budget nor step size decides.

  python -m experiments.reproduce                 # pilot, sweeps, seeds; resumable
  python -m experiments.reproduce --quick         # the same pipeline on digits, minutes (CI)
  python -m experiments.reproduce --report_only   # tables and plots from the finished runs
  python -m experiments.reproduce --screen        # every method, short runs, one seed

Protocol:

1. **Regime by measurement.** A pilot (:mod:`experiments.pilot`) trains the
   summed-loss baseline and the independent networks at several lengths and
   widths and fixes the budget: the cheapest candidate where capacity matters
   and twice the epochs add little, else the longest (a fixed budget, said as
   such in the report).
2. **Step size chosen fairly.** Every (model, method) gets its own rate sweep
   at the study's budget on the selection seed, which is never reported; the
   rate with the best validation accuracy (mean over exits) wins, and while it
   sits at an end of the grid the grid grows by a factor of 2 that way.
3. **Paired seeds.** The reported seeds give every method the same
   initialization and data order, so differences are paired per seed.
4. **Statistics by code.** Mean ± sample std (ddof=1); per model, paired
   differences with their t and the number of comparisons in the table
   (Bonferroni at a family-wise 5 %); nested against independent networks at
   matched width with both sizes; nested against branched at matched FLOPs.

Every run is a `train_and_evaluate` workdir under ``--out/runs``; finished runs
are read back, interrupted ones resume, diverged ones are recorded (and score
lowest in a sweep), so the study continues across sittings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
from typing import Optional, TypedDict

import jax
import numpy as np

from experiments import pilot as pilot_lib
from experiments import train
from experiments.checkpoint import atomic_write
from experiments.study import stats
from experiments.study.compute import compute_line
from experiments.study.keys import Key, PilotKey, RunKey, ScreenKey
from experiments.study.regime import Regime, method_variant
from experiments.study.runner import Runner
from experiments.study.store import Diverged, Finished, Store
from experiments.study.sweep import SweepRule, at_end, score, sweep

REFERENCE = 'independent'  # the non-anytime networks, trained with summed-loss SGD
BASELINE = 'sgd'


@dataclasses.dataclass(frozen=True)
class Study:
  """Models x methods x seeds, each (model, method) at the rate its own sweep chose."""
  pilot: pilot_lib.Pilot  # fixes the regime's length
  models: dict  # anytime model -> number of exits; the reference gets the first model's
  methods: tuple
  learning_rates: tuple  # the initial grid of every sweep
  seeds: tuple = (1, 2, 3)  # reported
  selection_seed: int = 0  # sweeps only
  max_grid_extensions: int = 3

  def methods_of(self, model: str) -> tuple:
    return (BASELINE,) if model == REFERENCE else self.methods

  def num_exits(self, model: str) -> int:
    return self.models.get(model, next(iter(self.models.values())))

  @property
  def all_models(self) -> tuple:
    first, *rest = self.models
    return (first, REFERENCE, *rest)  # the reference early: every model is compared to it

  @property
  def sweep_rule(self) -> SweepRule:
    return SweepRule(self.learning_rates, self.max_grid_extensions, self.selection_seed)


DATASETS = ('fashion_mnist', 'cifar10', 'cifar100')


def full_study(dataset: str = 'fashion_mnist') -> Study:
  """The study's models and methods; on Fashion-MNIST sized for 2 CPU cores.

  Fashion-MNIST: 10,000 training images, the pilot choosing among base widths
  2 and 4 (branched: 8 and 16) and 4, 8 and 16 epochs. CIFAR-10/100: the whole training split (crop-and-flip augmentation),
  the pilot choosing among 50, 100 and 200 epochs: for accelerators.
  """
  if dataset not in DATASETS:
    raise ValueError(f'unknown dataset {dataset!r}; the study runs on one of {DATASETS}')
  pilot = (pilot_lib.Pilot(dataset, train_size=10_000, epochs=(4, 8, 16), widths=(2, 4))
           if dataset == 'fashion_mnist' else
           pilot_lib.Pilot(dataset, train_size=None, epochs=(50, 100, 200)))
  return Study(
      pilot=pilot,
      models={'nested_width': 4, 'branched': 4},
      methods=('sgd', 'osgd', 'osgd_global', 'osgd_sum_norm', 'pcgrad'),
      learning_rates=(0.05, 0.1, 0.2))


def quick_study() -> Study:
  """The whole pipeline on digits in a few minutes; its criteria always pass."""
  return Study(
      pilot=pilot_lib.Pilot('digits', train_size=None, epochs=(1,), batch_size=32,
                            max_steps_per_epoch=6,
                            doubling_points=math.inf, capacity_points=-math.inf),
      models={'nested_width': 3, 'branched': 3}, methods=('sgd', 'osgd'),
      learning_rates=(0.1,), seeds=(1,), max_grid_extensions=0)


# The trainer's optimizers when the screen ran (0.2's names, see regime.STUDY_LABELS).
SCREENED = ('osgd', 'osgd_global', 'osgd_exits', 'osgd_exit_norm', 'osgd_sum_norm', 'osgd_vectors',
            'pcgrad', 'mgda', 'adaloss', 'upgrad', 'dualproj', 'cagrad', 'imtl_g', 'aligned_mtl',
            'gradvac', 'nash_mtl', 'config', 'fairgrad', 'uncertainty', 'dwa', 'famo', 'sgd',
            'sgd_mean')


@dataclasses.dataclass(frozen=True)
class Screen:
  """Every method the trainer offered on one model, short runs at a few rates, one seed.

  Cheap evidence for choosing which methods earn a place in the study; its
  ranking is of short runs, where step length weighs heavily.
  """
  regime: Regime
  model: str = 'nested_width'
  num_exits: int = 4
  learning_rates: tuple = (0.05, 0.1, 0.2)
  seed: int = 0
  methods: tuple = SCREENED


def full_screen() -> Screen:
  return Screen(Regime('fashion_mnist', epochs=1, train_size=10_000))


def quick_screen() -> Screen:
  return Screen(Regime('digits', epochs=1, batch_size=32, max_steps_per_epoch=6),
                num_exits=3, learning_rates=(0.1,), methods=('sgd', 'osgd', 'upgrad'))


def run_screen(spec: Screen, runner: Runner) -> None:
  """Trains every screening run not finished before."""
  for method in spec.methods:
    for lr in spec.learning_rates:
      runner.ensure(ScreenKey(method, lr),
                    spec.regime.config(spec.model, method, lr, spec.seed, spec.num_exits))


def screen(spec: Screen, store: Store) -> str:
  """The screening's table from its finished runs; writes ``screen.md``."""
  rates = spec.learning_rates
  lines = [f'Screening (ours): `{spec.model}` on {spec.regime.dataset}, '
           f'{spec.regime.train_size or "all"} training images, {spec.regime.epochs} epoch(s), '
           f'seed {spec.seed}: validation accuracy (%, mean over exits) at each peak rate, and '
           'the test accuracy per exit at the best; at one epoch the ranking confounds step '
           'length and direction. Methods by the trainer\'s names when it ran (0.2: `osgd` is '
           '`osgd_leaf` now, `osgd_exits` is `osgd`, `config` is `conflict_free`). "end": the best rate is at an end of the grid, so a rate beyond it may '
           'do better.', '',
           '| method | ' + ' | '.join(f'{lr:g}' for lr in rates)
           + ' | best rate | test accuracy per exit at the best |',
           '|---|' + '---|' * (len(rates) + 2)]
  for method in spec.methods:
    outcomes = {lr: store.outcome(ScreenKey(method, lr)) for lr in rates}
    done = {lr: o for lr, o in outcomes.items() if o is not None}
    if len(done) < len(rates):
      continue
    cells = ' | '.join('diverged' if isinstance(done[lr], Diverged)
                       else f'{100 * score(done[lr]):.2f}' for lr in rates)
    best = max(done, key=lambda lr: score(done[lr]))
    chosen = done[best]
    if isinstance(chosen, Diverged):
      lines.append(f'| {method} | {cells} | all diverged | |')
      continue
    end = ' end' if at_end(best, rates) else ''
    lines.append(f'| {method} | {cells} | {best:g}{end} | '
                 + ' / '.join(f'{100 * a:.2f}' for a in chosen.test_accuracy) + ' |')
  text = '\n'.join(lines) + '\n'
  atomic_write(store.out / 'screen.md', text)
  return text


def run(study: Study, runner: Runner) -> None:
  """Pilot, then per model: every method's sweep, then every method's reported seeds.

  Sweeps first, so that a model's choices (each method's rate, and which OSGD
  variant the main job defaults to) are all made on the selection seed before
  its reported seeds run.
  """
  pilot_lib.run(study.pilot, runner)
  reg = pilot_lib.decided_regime(study.pilot, runner.store)
  if reg is None:
    raise SystemExit('error: ' + pilot_lib.choose(
        study.pilot, pilot_lib.measure(study.pilot, runner.store))[1])
  source = runner.training(reg, study.num_exits)
  for model in study.all_models:
    rates = {method: sweep(study.sweep_rule, source, model, method).chosen_rate()
             for method in study.methods_of(model)}
    for method, rate in rates.items():
      for seed in study.seeds:
        source(RunKey(model, method, rate, seed))


# ----- the report -----

class Row(TypedDict):
  """One (model, method) of the study at its chosen rate, as ``summary.json`` holds it."""
  model: str
  method: str
  learning_rate: float
  rate_at_grid_end: Optional[bool]
  sweep: dict[str, float]  # rate (as in its folder's name) -> validation score
  seeds: list[int]  # reported seeds that finished
  diverged_seeds: list[int]
  mflops: list[float]  # per exit, cumulative
  params: list[int]
  test: dict[int, list[float]]  # seed -> test accuracy per exit
  validation: dict[int, list[float]]
  budgeted_batch: dict[int, list[dict]]  # seed -> the early-exit curve's points
  train_seconds: float  # summed over the reported seeds


def summarize(study: Study, store: Store) -> dict[str, Row]:
  """Per (model, method): the sweep and per-seed results at the chosen rate."""
  rows: dict[str, Row] = {}
  if pilot_lib.decided_regime(study.pilot, store) is None:
    return rows
  for model in study.all_models:
    for method in study.methods_of(model):
      chosen = sweep(study.sweep_rule, store.outcome, model, method)
      if chosen.rate is None:
        continue
      outcomes = {s: store.outcome(RunKey(model, method, chosen.rate, s)) for s in study.seeds}
      runs = {s: r for s, r in outcomes.items() if isinstance(r, Finished)}
      if not runs:
        continue
      first = next(iter(runs.values()))
      rows[f'{model}/{method}'] = {
          'model': model, 'method': method, 'learning_rate': chosen.rate,
          'rate_at_grid_end': chosen.at_end,
          'sweep': {f'{lr:g}': s for lr, s in chosen.scores.items()},
          'seeds': sorted(runs),
          'diverged_seeds': sorted(s for s, r in outcomes.items() if isinstance(r, Diverged)),
          'mflops': first.mflops,
          'params': first.params,
          'test': {s: r.test_accuracy for s, r in runs.items()},
          'validation': {s: r.validation_accuracy for s, r in runs.items()},
          'budgeted_batch': {s: r.budgeted_batch for s, r in runs.items()},
          'train_seconds': float(sum(r.train_seconds for r in runs.values())),
      }
  return rows


def paired(a: Optional[Row], b: Optional[Row]) -> Optional[np.ndarray]:
  """``[S, K]`` per-seed test accuracy differences, row a minus row b, over their common seeds."""
  if not a or not b:
    return None
  seeds = sorted(set(a['test']) & set(b['test']))
  if not seeds:
    return None
  return np.array([np.subtract(a['test'][s], b['test'][s]) for s in seeds])


def _interpolate(mflops, accuracy, at):
  """Accuracy at ``at`` MFLOPs on the piecewise-linear curve in log FLOPs."""
  return np.interp(np.log(at), np.log(mflops), accuracy)


def matched_cost(a: Optional[Row], b: Optional[Row]) -> Optional[dict]:
  """Row a minus row b at equal cumulative FLOPs, paired per seed.

  Compared at each exit's FLOPs of either model that lies inside both models'
  FLOPs ranges, on each run's accuracy-vs-log-FLOPs curve. Returns
  ``{'mflops': [P], 'diff': [S, P]}``, or None without common seeds or range.
  """
  if not a or not b:
    return None
  lo = max(a['mflops'][0], b['mflops'][0])
  hi = min(a['mflops'][-1], b['mflops'][-1])
  points = sorted(f for f in {*a['mflops'], *b['mflops']} if lo <= f <= hi)
  seeds = sorted(set(a['test']) & set(b['test']))
  if not points or not seeds:
    return None
  diff = np.array([[_interpolate(a['mflops'], a['test'][s], f)
                    - _interpolate(b['mflops'], b['test'][s], f) for f in points] for s in seeds])
  return {'mflops': points, 'diff': diff}


def _points(values, sign=''):
  mean, std = stats.mean_std(100 * np.asarray(values))
  return [f'{m:{sign}.2f} ± {s:.2f}' for m, s in zip(mean, std)]


def _difference_rows(title, comparisons, num_comparisons,
                     columns=('model', 'comparison', 'exit')):
  """A table of paired differences with per-row t and interval of the mean over exits.

  ``comparisons``: ``(first cell, second cell, diff [S, K])`` per row, K exits
  (or FLOPs points, with ``columns[2] = 'point'``).
  """
  first, second, per = columns
  lines = ['', title, '', f'| {first} | {second} | seeds | difference per {per} (points) '
           f'| mean over {per}s | t | clear | simultaneous 95 % interval |',
           '|---|---|---|---|---|---|---|---|']
  for model, label, diff in comparisons:
    test = stats.paired_test(100 * diff.mean(1), num_comparisons)
    lo, hi = test.interval
    lines.append(f"| {model} | {label} | {len(diff)} | {' / '.join(_points(diff, '+'))} "
                 f"| {_points(diff.mean(1, keepdims=True), '+')[0]} | {test.t:+.2f} "
                 f"| {_clear(test)} | {lo:+.2f} to {hi:+.2f} |")
  return lines


def _clear(test: stats.PairedTest) -> str:
  return 'yes' if test.passed else 'no'


def _family_rows(tables):
  """Every comparison of the tables above, corrected together (Bonferroni over all of them).

  ``tables``: ``(name, comparisons)`` with comparisons as in :func:`_difference_rows`.
  The per-table bounds above correct only within a table; this is the family the
  report's tests form as a whole.
  """
  n = sum(len(comparisons) for _, comparisons in tables)
  if not n:
    return []
  rows = [(name, first, second, len(diff), stats.paired_test(100 * diff.mean(1), n))
          for name, comparisons in tables for first, second, diff in comparisons]
  crits = {pairs: test.critical_t for *_, pairs, test in rows}
  bound = ', '.join(f'|t| >= {c:.2f} with {k} pairs' for k, c in sorted(crits.items()))
  passed = sum(test.passed for *_, test in rows)
  lines = ['', f'The whole family: all {n} comparisons above corrected together (two-sided 5 % '
           f'Bonferroni over {n}: {bound}); {passed} pass.', '',
           '| table | row | comparison | t | clear | simultaneous 95 % interval |',
           '|---|---|---|---|---|---|']
  for name, first, second, _, test in rows:
    lo, hi = test.interval
    lines.append(f'| {name} | {first} | {second} | {test.t:+.2f} | {_clear(test)} '
                 f'| {lo:+.2f} to {hi:+.2f} |')
  return lines


def _first_exit_rows(comparisons):
  """Each comparison's first-exit difference per seed: where the paper expects OSGD's gain.

  ``comparisons``: ``(model, label, diff [S, K])`` per row, seeds in order.
  """
  lines = ['', 'First exit per seed (test accuracy, points, seeds in order; descriptive: the '
           'declared test is the mean over exits above):', '',
           '| model | comparison | first exit per seed | seeds above zero |', '|---|---|---|---|']
  for model, label, diff in comparisons:
    first = 100 * diff[:, 0]
    lines.append(f"| {model} | {label} | {' / '.join(f'{d:+.2f}' for d in first)} "
                 f"| {int(np.sum(first > 0))} of {len(first)} |")
  return lines


def markdown(study: Study, rows: dict[str, Row], store: Store) -> str:
  reg = pilot_lib.decided_regime(study.pilot, store)
  if reg is None or not rows:
    return 'No finished study runs yet.\n'
  size = f'{reg.train_size:,}' if reg.train_size else 'all'
  lines = [
      f'Study on {reg.dataset} (ours): {size} training images, {reg.epochs} epochs of batches '
      f'of {reg.batch_size}, base width {reg.width or "default"} (length and width from the '
      f'pilot), warmup {100 * reg.warmup_fraction:.0f} % '
      f'then cosine; each rate chosen on seed {study.selection_seed} (not reported) by '
      'validation accuracy, mean over exits ("end": the chosen rate is still at an end of its '
      f'grid); seeds {list(study.seeds)} reported, test accuracy (%) mean ± sample std.', '',
      '| model | method | rate (swept) | seeds | params per exit | MFLOPs per exit '
      '| test accuracy per exit |', '|---|---|---|---|---|---|---|']
  for r in rows.values():
    seeds = str(len(r['seeds'])) + (f" (+{len(r['diverged_seeds'])} diverged)"
                                    if r['diverged_seeds'] else '')
    swept = ', '.join(r['sweep'])
    end = ' end' if r['rate_at_grid_end'] else ''
    lines.append(f"| {r['model']} | {r['method']} | {r['learning_rate']:g}{end} ({swept}) "
                 f"| {seeds} | {' / '.join(f'{p:,}' for p in r['params'])} "
                 f"| {' / '.join(f'{f:.2f}' for f in r['mflops'])} "
                 f"| {' / '.join(_points(list(r['test'].values())))} |")

  anytime = [m for m in study.all_models if m != REFERENCE]
  versus_sgd = [(model, f'{method} − {BASELINE}',
                 paired(rows.get(f'{model}/{method}'), rows.get(f'{model}/{BASELINE}')))
                for model in anytime for method in study.methods if method != BASELINE]
  versus_osgd = [(model, f'{method} − osgd',
                  paired(rows.get(f'{model}/{method}'), rows.get(f'{model}/osgd')))
                 for model in anytime for method in study.methods
                 if method.startswith('osgd_')]
  comparisons = [c for c in versus_sgd + versus_osgd if c[2] is not None]
  lines += _difference_rows(
      f'Paired differences per model (test accuracy, points; t of the mean over exits; '
      f'"clear": |t| beyond the two-sided 5 % Bonferroni bound for the {len(comparisons)} '
      'comparisons in this table; the interval, of the mean over exits at that level, holds '
      'the effects the data leave possible). `osgd_sum_norm` has OSGD\'s direction at the summed '
      'gradient\'s length, so `osgd_sum_norm − osgd` isolates step length and '
      '`osgd_sum_norm − sgd` the direction:', comparisons, len(comparisons))
  if comparisons:
    lines += _first_exit_rows(comparisons)

  first = next(iter(study.models))
  reference = rows.get(f'{REFERENCE}/{BASELINE}')
  nested = [(first, f'{method} − independent', paired(rows.get(f'{first}/{method}'), reference))
            for method in study.methods]
  nested = [c for c in nested if c[2] is not None]
  if nested and reference:
    nested_row = rows[f'{first}/{BASELINE}']
    own = np.diff([0.0, *reference['params']]), np.diff([0.0, *reference['mflops']])
    lines += _difference_rows(
        f'Nested against independent networks of the same width: exit k of `{first}` minus '
        f'independent network k (trained alone with `{BASELINE}`). Sizes per exit: nested '
        f"(cumulative) {' / '.join(f'{p:,}' for p in nested_row['params'])} params, "
        f"{' / '.join(f'{f:.2f}' for f in nested_row['mflops'])} MFLOPs; independent network k "
        f"alone {' / '.join(f'{int(p):,}' for p in own[0])} params, "
        f"{' / '.join(f'{f:.2f}' for f in own[1])} MFLOPs:", nested, len(nested))

  at_cost = [(method, ' / '.join(f'{f:.2f}' for f in m['mflops']), m['diff'])
             for method in study.methods if len(anytime) > 1
             for m in [matched_cost(rows.get(f'{anytime[0]}/{method}'),
                                    rows.get(f'{anytime[1]}/{method}'))] if m]
  if at_cost:
    lines += _difference_rows(
        f'Nested against branched at equal cost: `{anytime[0]}` minus `{anytime[1]}`, both '
        'trained with the same method, at the same cumulative FLOPs (each run\'s accuracy '
        'interpolated in log FLOPs between its exits), paired per seed; t, "clear" and the '
        f'interval as above, for the {len(at_cost)} comparisons in this table:', at_cost,
        len(at_cost), columns=('method', 'at MFLOPs', 'point'))

  lines += _family_rows([('per model', comparisons),
                         ('nested − independent', nested if nested and reference else []),
                         ('nested − branched at cost', at_cost)])

  best = early_exit_choice(rows)
  if best:
    lines += ['', f"Early exit (budgeted batch, thresholds on the logit margin calibrated on "
              f"validation): `{best['model']}` with `{best['method']}`, the anytime "
              'configuration with the best validation accuracy (mean over exits and seeds); '
              '`budgeted_batch.png` shows its curve averaged over the reported seeds.']
    cost = cost_to_match_last_exit(best)
    if cost is not None:
      lines.append(f"Averaged over the seeds, early exit comes within {100 * MATCH_TOLERANCE:g} "
                   f"points of the last exit's test accuracy at {cost:.2f} MFLOPs per image, "
                   f"{100 * cost / best['mflops'][-1]:.0f} % of the last exit's "
                   f"{best['mflops'][-1]:.2f}.")
  return '\n'.join(lines) + '\n'


def sweeps_markdown(study: Study, store: Store) -> str:
  """The rate sweeps so far, and the main job's choice once its sweeps have finished."""
  if pilot_lib.decided_regime(study.pilot, store) is None:
    return ''
  sweeps = {(model, method): sweep(study.sweep_rule, store.outcome, model, method)
            for model in study.all_models for method in study.methods_of(model)}
  sweeps = {k: v for k, v in sweeps.items() if v.scores}
  if not sweeps:
    return ''
  rates = sorted({lr for v in sweeps.values() for lr in v.scores})
  lines = [f'Rate sweeps on seed {study.selection_seed} (ours, not reported): validation '
           'accuracy (%), mean over exits, per peak rate; "end": the chosen rate is still at an '
           'end of its grid.', '',
           '| model | method | ' + ' | '.join(f'{lr:g}' for lr in rates) + ' | chosen |',
           '|---|---|' + '---|' * (len(rates) + 1)]
  for (model, method), v in sweeps.items():
    cells = [('diverged' if v.scores[lr] == -math.inf else f'{100 * v.scores[lr]:.2f}')
             if lr in v.scores else '' for lr in rates]
    chosen = 'running' if v.rate is None else f'{v.rate:g}' + (' end' if v.at_end else '')
    lines.append(f'| {model} | {method} | ' + ' | '.join(cells) + f' | {chosen} |')
  main_job = main_job_choice(study, store)
  if main_job:
    lines += ['', f"Main job: `python -m experiments.train` defaults to `--optimizer "
              f"{method_variant(main_job['optimizer'])[0]} --learning_rate {main_job['learning_rate']:g}`, the OSGD "
              f"variant with the best validation accuracy on `{next(iter(study.models))}` at "
              f"its chosen rate (mean over exits and over the {main_job['seeds']} finished "
              f"seeds, selection seed included: {100 * main_job['score']:.2f} %)."]
  return '\n'.join(lines) + '\n\n'


def main_job_choice(study: Study, store: Store) -> Optional[dict]:
  """The OSGD variant and rate ``experiments.train`` defaults to, from the first model.

  Each variant (a method named ``osgd*``) at the rate its sweep chose, scored
  by validation accuracy (mean over exits) averaged over every finished run at
  that rate: the selection seed and whichever reported seeds have finished, so
  the choice rests on more than one seed once they have (validation only: the
  test accuracies decide nothing). ``{'optimizer', 'learning_rate', 'score',
  'seeds'}``; None until every variant's sweep has finished.
  """
  if pilot_lib.decided_regime(study.pilot, store) is None:
    return None
  model = next(iter(study.models))
  best: Optional[dict] = None
  for method in (m for m in study.methods if m.startswith('osgd')):
    rate = sweep(study.sweep_rule, store.outcome, model, method).rate
    if rate is None:
      return None
    runs = [store.outcome(RunKey(model, method, rate, seed))
            for seed in (study.selection_seed, *study.seeds)]
    scores = [score(r) for r in runs if r is not None]
    choice = {'optimizer': method, 'learning_rate': rate, 'score': float(np.mean(scores)),
              'seeds': len(scores)}
    if best is None or choice['score'] > best['score']:
      best = choice
  return best


def early_exit_choice(rows: dict) -> Optional[dict]:
  """The anytime configuration with the best mean validation accuracy."""
  anytime = [r for r in rows.values() if r['model'] != REFERENCE]
  if not anytime:
    return None
  return max(anytime, key=lambda r: np.mean(list(r['validation'].values())))


def mean_curve(row: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The budgeted-batch curve averaged over seeds, point by point (same budgets ``q``).

  Returns ``(mflops [P], accuracy mean [P], accuracy sample std [P])``.
  """
  curves = [sorted(c, key=lambda p: p['q']) for c in row['budgeted_batch'].values()]
  flops = np.mean([[p['flops'] for p in c] for c in curves], 0) / 1e6
  mean, std = stats.mean_std(np.array([[p['accuracy'] for p in c] for c in curves]))
  order = np.argsort(flops)
  return flops[order], mean[order], std[order]


MATCH_TOLERANCE = 0.001  # early exit "matches" the last exit within 0.1 points


def cost_to_match_last_exit(row: dict) -> Optional[float]:
  """The fewest mean MFLOPs per image at which the seed-averaged early-exit curve
  comes within ``MATCH_TOLERANCE`` of the last exit's seed-averaged test accuracy."""
  flops, mean, _ = mean_curve(row)
  last = np.mean([accuracy[-1] for accuracy in row['test'].values()])
  reached = np.flatnonzero(mean >= last - MATCH_TOLERANCE)
  return float(flops[reached[0]]) if reached.size else None


def plot(study: Study, rows: dict[str, Row], out: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  anytime = [m for m in study.all_models if m != REFERENCE]
  fig, axes = plt.subplots(1, len(anytime), figsize=(5 * len(anytime), 3.8), squeeze=False)
  reference = rows.get(f'{REFERENCE}/{BASELINE}')
  for ax, model in zip(axes[0], anytime):
    for r in rows.values():
      if r['model'] == model:
        mean, std = stats.mean_std(100 * np.array(list(r['test'].values())))
        ax.errorbar(r['mflops'], mean, yerr=np.nan_to_num(std), marker='o', capsize=2,
                    label=r['method'])
    if reference:
      mean, std = stats.mean_std(100 * np.array(list(reference['test'].values())))
      ax.errorbar(np.diff([0.0, *reference['mflops']]), mean, yerr=np.nan_to_num(std),
                  color='k', ls='--', marker='s', label='independent (each alone)')
    ax.set_xscale('log')
    ax.set_title(model)
    ax.set_xlabel('MFLOPs (cumulative to the exit)')
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('test accuracy (%)')
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out / 'accuracy_vs_flops.png', dpi=110)
  plt.close(fig)
  best = early_exit_choice(rows)
  if best:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    flops, mean, std = mean_curve(best)
    ax.plot(flops, 100 * mean, '.-', label=f"early exit, mean of {len(best['seeds'])} seeds")
    ax.fill_between(flops, 100 * (mean - np.nan_to_num(std)), 100 * (mean + np.nan_to_num(std)),
                    alpha=0.2)
    exit_mean, _ = stats.mean_std(100 * np.array(list(best['test'].values())))
    ax.plot(best['mflops'], exit_mean, 'o', label='single exits, same seeds')
    ax.set_xscale('log')
    ax.set_xlabel('average MFLOPs per image')
    ax.set_ylabel('test accuracy (%)')
    ax.set_title(f"{best['model']} + {best['method']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / 'budgeted_batch.png', dpi=110)
    plt.close(fig)


def compute_markdown(study: Study, store: Store) -> str:
  """The study's compute: the summed ``train_seconds`` of its finished runs, per part.

  Only this study's runs count: the confirmatory study (:mod:`experiments.confirm`) shares
  the folder and adds seeds, arms and a pilot of its own.
  """
  seeds = (study.selection_seed, *study.seeds)

  def part_of(key: Key) -> Optional[str]:
    if isinstance(key, PilotKey):
      return 'pilot'
    if (isinstance(key, RunKey) and not key.doubled and key.model in study.all_models
        and key.method in study.methods_of(key.model) and key.seed in seeds):
      return f'`{key.model}`'
    return None

  return compute_line(store.compute_parts(part_of))


def report(study: Study, store: Store) -> str:
  """Writes pilot.md, learning_curves.png, study.md, summary.json and the plots."""
  out = store.out
  pilot_text = pilot_lib.markdown(study.pilot, pilot_lib.measure(study.pilot, store), store)
  atomic_write(out / 'pilot.md', pilot_text)
  pilot_lib.plot(study.pilot, store, out / 'learning_curves.png')
  rows = summarize(study, store)
  text = (sweeps_markdown(study, store) + markdown(study, rows, store)
          + compute_markdown(study, store))
  atomic_write(out / 'study.md', text)
  atomic_write(out / 'summary.json', json.dumps(rows, indent=1))
  if rows:
    plot(study, rows, out)
  return pilot_text + '\n' + text


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', default='fashion_mnist', choices=DATASETS,
                      help='cifar10/cifar100: the whole training split, for accelerators')
  parser.add_argument('--out', default=None,
                      help='default: results/ (results/<dataset>/ for CIFAR, results/quick/ '
                      'with --quick)')
  parser.add_argument('--data_dir', default=train.data.DEFAULT_DATA_DIR)
  parser.add_argument('--quick', action='store_true', help='the same pipeline on digits, minutes')
  parser.add_argument('--report_only', action='store_true')
  parser.add_argument('--screen', action='store_true',
                      help='only the screening of every method (short runs, one seed)')
  args = parser.parse_args(argv)
  study = quick_study() if args.quick else full_study(args.dataset)
  default_out = ('results/quick' if args.quick else
                 'results' if args.dataset == 'fashion_mnist' else f'results/{args.dataset}')
  out = pathlib.Path(args.out or default_out)
  out.mkdir(parents=True, exist_ok=True)
  store = Store(out)
  runner = Runner(store, args.data_dir)
  if not jax.config.jax_compilation_cache_dir:
    # Runs of one (model, method) differ in data and rate only: they reuse
    # the first run's compiled programs from this on-disk cache.
    jax.config.update('jax_compilation_cache_dir',
                      str(pathlib.Path(args.data_dir) / 'xla_cache'))
  if args.screen:
    spec = quick_screen() if args.quick else full_screen()
    if not args.report_only:
      run_screen(spec, runner)
    print(screen(spec, store))
    return
  if not args.report_only:
    run(study, runner)
  print(report(study, store))


if __name__ == '__main__':
  main()
