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
from typing import Optional

import jax
import numpy as np

from experiments import pilot as pilot_lib
from experiments import optimizers, stats, study_runs, train
from experiments.checkpoint import atomic_write

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


@dataclasses.dataclass(frozen=True)
class Screen:
  """Every method of the trainer on one model, short runs at a few rates, one seed.

  Cheap evidence for choosing which methods earn a place in the study; its
  ranking is of short runs, where step length weighs heavily.
  """
  regime: study_runs.Regime
  model: str = 'nested_width'
  num_exits: int = 4
  learning_rates: tuple = (0.05, 0.1, 0.2)
  seed: int = 0
  methods: tuple = optimizers.OPTIMIZERS


def full_screen() -> Screen:
  return Screen(study_runs.Regime('fashion_mnist', epochs=1, train_size=10_000))


def quick_screen() -> Screen:
  return Screen(study_runs.Regime('digits', epochs=1, batch_size=32, max_steps_per_epoch=6),
                num_exits=3, learning_rates=(0.1,), methods=('sgd', 'osgd', 'upgrad'))


def screen(spec: Screen, out: pathlib.Path, data_dir: str, train_missing: bool) -> str:
  """Runs (or reads) the screening and returns its table; writes ``screen.md``."""
  rates = spec.learning_rates
  lines = [f'Screening (ours): `{spec.model}` on {spec.regime.dataset}, '
           f'{spec.regime.train_size or "all"} training images, {spec.regime.epochs} epoch(s), '
           f'seed {spec.seed}: validation accuracy (%, mean over exits) at each peak rate, and '
           'the test accuracy per exit at the best; short runs rank step lengths as much as '
           'directions. "end": the best rate is at an end of the grid, so a rate beyond it may '
           'do better.', '',
           '| method | ' + ' | '.join(f'{lr:g}' for lr in rates)
           + ' | best rate | test accuracy per exit at the best |',
           '|---|' + '---|' * (len(rates) + 2)]
  for method in spec.methods:
    outcomes = {}
    for lr in rates:
      workdir = out / 'screen' / method / f'lr{lr:g}'
      config = spec.regime.config(spec.model, method, lr, spec.seed, spec.num_exits)
      outcomes[lr] = (study_runs.ensure(workdir, config, data_dir) if train_missing
                      else study_runs.outcome(workdir))
    if any(o is None for o in outcomes.values()):
      continue
    cells = ' | '.join('diverged' if 'diverged' in outcomes[lr]
                       else f'{100 * _score(outcomes[lr]):.2f}' for lr in rates)
    best = max(outcomes, key=lambda lr: _score(outcomes[lr]))
    if 'diverged' in outcomes[best]:
      lines.append(f'| {method} | {cells} | all diverged | |')
      continue
    end = ' end' if _at_end(best, rates) else ''
    lines.append(f'| {method} | {cells} | {best:g}{end} | '
                 + ' / '.join(f"{100 * e['test_accuracy']:.2f}" for e in outcomes[best]['exits'])
                 + ' |')
  text = '\n'.join(lines) + '\n'
  atomic_write(out / 'screen.md', text)
  return text


def regime(study: Study, out: pathlib.Path) -> Optional[study_runs.Regime]:
  """The study's regime once its pilot has decided the length; None before."""
  chosen, _ = pilot_lib.choose(study.pilot, pilot_lib.measure(study.pilot, out))
  return None if chosen is None else study.pilot.regime(*chosen)


def run_dir(out, model, method, lr, seed) -> pathlib.Path:
  return out / 'runs' / model / method / f'lr{lr:g}' / f'seed{seed}'


def _at_end(best: float, rates) -> bool:
  """Whether the best rate lies at an end of its grid, so a rate beyond it may do better."""
  return len(rates) > 1 and best in (min(rates), max(rates))


def _score(outcome: dict) -> float:
  if 'diverged' in outcome:
    return -math.inf
  return float(np.mean([e['validation_accuracy'] for e in outcome['exits']]))


def study_run(study, reg, out, model, method, lr, seed, data_dir, train_missing):
  workdir = run_dir(out, model, method, lr, seed)
  if not train_missing:
    return study_runs.outcome(workdir)
  config = reg.config(model, method, lr, seed, study.num_exits(model))
  return study_runs.ensure(workdir, config, data_dir)


def sweep(study, reg, out, model, method, data_dir='', train_missing=False) -> dict:
  """The rate sweep of one (model, method) on the selection seed.

  Returns ``{'rate': chosen or None (sweep unfinished), 'scores': {rate:
  validation score}, 'at_end': whether the chosen rate is still at an end}``.
  """
  grid = sorted(study.learning_rates)
  for extension in range(study.max_grid_extensions + 1):
    scores = {}
    for lr in grid:
      done = study_run(study, reg, out, model, method, lr, study.selection_seed, data_dir,
                  train_missing)
      if done is None:
        return {'rate': None, 'scores': scores, 'at_end': None}
      scores[lr] = _score(done)
    best = max(scores, key=scores.get)
    at_end = _at_end(best, grid)
    if not at_end or extension == study.max_grid_extensions:
      return {'rate': best, 'scores': scores, 'at_end': at_end}
    grid = [best / 2, *grid] if best == grid[0] else [*grid, best * 2]
  raise AssertionError('unreachable')


def run(study: Study, out: pathlib.Path, data_dir: str) -> None:
  """Pilot, then per model: every method's sweep, then every method's reported seeds.

  Sweeps first, so that a model's choices (each method's rate, and which OSGD
  variant the main job defaults to) are all made on the selection seed before
  its reported seeds run.
  """
  pilot_lib.run(study.pilot, out, data_dir)
  reg = regime(study, out)
  if reg is None:
    raise SystemExit('error: ' + pilot_lib.choose(
        study.pilot, pilot_lib.measure(study.pilot, out))[1])
  for model in study.all_models:
    rates = {method: sweep(study, reg, out, model, method, data_dir, train_missing=True)['rate']
             for method in study.methods_of(model)}
    for method, rate in rates.items():
      for seed in study.seeds:
        study_run(study, reg, out, model, method, rate, seed, data_dir, train_missing=True)


# ----- the report -----

def summarize(study: Study, out: pathlib.Path) -> dict:
  """Per (model, method): the sweep and per-seed results at the chosen rate."""
  reg = regime(study, out)
  rows = {}
  if reg is None:
    return rows
  for model in study.all_models:
    for method in study.methods_of(model):
      chosen = sweep(study, reg, out, model, method)
      if chosen['rate'] is None:
        continue
      outcomes = {s: study_run(study, reg, out, model, method, chosen['rate'], s, '', False)
                  for s in study.seeds}
      runs = {s: r for s, r in outcomes.items() if r and 'diverged' not in r}
      if not runs:
        continue
      first = next(iter(runs.values()))
      rows[f'{model}/{method}'] = {
          'model': model, 'method': method, 'learning_rate': chosen['rate'],
          'rate_at_grid_end': chosen['at_end'],
          'sweep': {f'{lr:g}': s for lr, s in chosen['scores'].items()},
          'seeds': sorted(runs),
          'diverged_seeds': sorted(s for s, r in outcomes.items() if r and 'diverged' in r),
          'mflops': [e['flops'] / 1e6 for e in first['exits']],
          'params': [e['params'] for e in first['exits']],
          'test': {s: [e['test_accuracy'] for e in r['exits']] for s, r in runs.items()},
          'validation': {s: [e['validation_accuracy'] for e in r['exits']]
                         for s, r in runs.items()},
          'budgeted_batch': {s: r['budgeted_batch'] for s, r in runs.items()},
          'train_seconds': float(sum(r['train_seconds'] for r in runs.values())),
      }
  return rows


def paired(a: Optional[dict], b: Optional[dict], split: str = 'test'):
  """``[S, K]`` per-seed differences, row a minus row b, over their common seeds."""
  if not a or not b:
    return None
  seeds = sorted(set(a[split]) & set(b[split]))
  if not seeds:
    return None
  return np.array([np.subtract(a[split][s], b[split][s]) for s in seeds])


def _interpolate(mflops, accuracy, at):
  """Accuracy at ``at`` MFLOPs on the piecewise-linear curve in log FLOPs."""
  return np.interp(np.log(at), np.log(mflops), accuracy)


def matched_cost(a: Optional[dict], b: Optional[dict]) -> Optional[dict]:
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
    t = stats.paired_t(diff.mean(1))
    crit = stats.critical_t(len(diff), num_comparisons)
    clear = 'yes' if abs(t) >= crit else 'no'
    lo, hi = stats.interval(100 * diff.mean(1), num_comparisons)
    lines.append(f"| {model} | {label} | {len(diff)} | {' / '.join(_points(diff, '+'))} "
                 f"| {_points(diff.mean(1, keepdims=True), '+')[0]} | {t:+.2f} | {clear} "
                 f"| {lo:+.2f} to {hi:+.2f} |")
  return lines


def _family_rows(tables):
  """Every comparison of the tables above, corrected together (Bonferroni over all of them).

  ``tables``: ``(name, comparisons)`` with comparisons as in :func:`_difference_rows`.
  The per-table bounds above correct only within a table; this is the family the
  report's tests form as a whole.
  """
  rows = [(name, first, second, diff) for name, comparisons in tables
          for first, second, diff in comparisons]
  if not rows:
    return []
  n = len(rows)
  crits = {len(diff): stats.critical_t(len(diff), n) for *_, diff in rows}
  bound = ', '.join(f'|t| >= {c:.2f} with {k} pairs' for k, c in sorted(crits.items()))
  passed = sum(abs(stats.paired_t(diff.mean(1))) >= crits[len(diff)] for *_, diff in rows)
  lines = ['', f'The whole family: all {n} comparisons above corrected together (two-sided 5 % '
           f'Bonferroni over {n}: {bound}); {passed} pass.', '', '| table | row | comparison | t | clear | simultaneous 95 % interval |',
           '|---|---|---|---|---|---|']
  for name, first, second, diff in rows:
    t = stats.paired_t(diff.mean(1))
    lo, hi = stats.interval(100 * diff.mean(1), n)
    clear = 'yes' if abs(t) >= crits[len(diff)] else 'no'
    lines.append(f'| {name} | {first} | {second} | {t:+.2f} | {clear} | {lo:+.2f} to {hi:+.2f} |')
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


def markdown(study: Study, rows: dict, out: pathlib.Path) -> str:
  reg = regime(study, out)
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


def sweeps_markdown(study: Study, out: pathlib.Path) -> str:
  """The rate sweeps so far, and the main job's choice once its sweeps have finished."""
  reg = regime(study, out)
  if reg is None:
    return ''
  sweeps = {(model, method): sweep(study, reg, out, model, method)
            for model in study.all_models for method in study.methods_of(model)}
  sweeps = {k: v for k, v in sweeps.items() if v['scores']}
  if not sweeps:
    return ''
  rates = sorted({lr for v in sweeps.values() for lr in v['scores']})
  lines = [f'Rate sweeps on seed {study.selection_seed} (ours, not reported): validation '
           'accuracy (%), mean over exits, per peak rate; "end": the chosen rate is still at an '
           'end of its grid.', '',
           '| model | method | ' + ' | '.join(f'{lr:g}' for lr in rates) + ' | chosen |',
           '|---|---|' + '---|' * (len(rates) + 1)]
  for (model, method), v in sweeps.items():
    cells = [('diverged' if v['scores'][lr] == -math.inf else f"{100 * v['scores'][lr]:.2f}")
             if lr in v['scores'] else '' for lr in rates]
    chosen = ('running' if v['rate'] is None else
              f"{v['rate']:g}" + (' end' if v['at_end'] else ''))
    lines.append(f'| {model} | {method} | ' + ' | '.join(cells) + f' | {chosen} |')
  main_job = main_job_choice(study, out)
  if main_job:
    lines += ['', f"Main job: `python -m experiments.train` defaults to `--optimizer "
              f"{main_job['optimizer']} --learning_rate {main_job['learning_rate']:g}`, the OSGD "
              f"variant with the best validation accuracy on `{next(iter(study.models))}` at "
              f"its chosen rate (mean over exits and over the {main_job['seeds']} finished "
              f"seeds, selection seed included: {100 * main_job['score']:.2f} %)."]
  return '\n'.join(lines) + '\n\n'


def main_job_choice(study: Study, out: pathlib.Path) -> Optional[dict]:
  """The OSGD variant and rate ``experiments.train`` defaults to, from the first model.

  Each variant (a method named ``osgd*``) at the rate its sweep chose, scored
  by validation accuracy (mean over exits) averaged over every finished run at
  that rate: the selection seed and whichever reported seeds have finished, so
  the choice rests on more than one seed once they have (validation only: the
  test accuracies decide nothing). ``{'optimizer', 'learning_rate', 'score',
  'seeds'}``; None until every variant's sweep has finished.
  """
  reg = regime(study, out)
  if reg is None:
    return None
  model = next(iter(study.models))
  best = None
  for method in (m for m in study.methods if m.startswith('osgd')):
    rate = sweep(study, reg, out, model, method)['rate']
    if rate is None:
      return None
    runs = [study_run(study, reg, out, model, method, rate, seed, '', False)
            for seed in (study.selection_seed, *study.seeds)]
    scores = [_score(r) for r in runs if r is not None]
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


def plot(study: Study, rows: dict, out: pathlib.Path) -> None:
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


def compute_markdown(study: Study, out: pathlib.Path) -> str:
  """The study's compute: the summed ``train_seconds`` of its finished runs, per part.

  Only this study's runs count: the confirmatory study (:mod:`experiments.confirm`) shares
  ``out`` and adds seeds, arms and a pilot of its own.
  """
  seeds = {f'seed{s}' for s in (study.selection_seed, *study.seeds)}

  def part_of(part: tuple) -> Optional[str]:
    if part[0] == 'pilot' and 'confirm' not in part:
      return 'pilot'
    if (part[0] == 'runs' and part[1] in study.all_models
        and part[2] in study.methods_of(part[1]) and part[4] in seeds):
      return f'`{part[1]}`'
    return None

  return summed_compute(out, part_of)


def compute_parts(out: pathlib.Path, part_of) -> dict[str, tuple[int, float]]:
  """The finished runs under ``out`` per part: how many, and their summed ``train_seconds``.

  ``part_of`` names the part a run belongs to from its path's parts relative to
  ``out`` (``('runs', model, method, 'lr0.1', 'seed4', 'results.json')``), or
  None for a run that is not counted.
  """
  parts: dict = {}
  for path in sorted(out.glob('*/**/results.json')):
    name = part_of(path.relative_to(out).parts)
    if name is None:
      continue
    runs, seconds = parts.get(name, (0, 0.0))
    parts[name] = runs + 1, seconds + json.loads(path.read_text())['train_seconds']
  return parts


def summed_compute(out: pathlib.Path, part_of) -> str:
  """A compute line: the summed ``train_seconds`` of the finished runs, per part (see
  :func:`compute_parts`)."""
  parts = compute_parts(out, part_of)
  if not parts:
    return ''
  total = sum(seconds for _, seconds in parts.values())
  return ('\nCompute (ours): summed training time of the finished runs, sweeps included '
          '(it also counts time a run sat paused or shared the CPU): ' + ', '.join(
              f'{name} {runs} runs {seconds / 60:.0f} min' for name, (runs, seconds)
              in parts.items()) + f'; in all {total / 3600:.1f} h.\n')


def report(study: Study, out: pathlib.Path) -> str:
  """Writes pilot.md, learning_curves.png, study.md, summary.json and the plots."""
  pilot_text = pilot_lib.markdown(study.pilot, pilot_lib.measure(study.pilot, out), out)
  atomic_write(out / 'pilot.md', pilot_text)
  pilot_lib.plot(study.pilot, out, out / 'learning_curves.png')
  rows = summarize(study, out)
  text = sweeps_markdown(study, out) + markdown(study, rows, out) + compute_markdown(study, out)
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
  if not jax.config.jax_compilation_cache_dir:
    # Runs of one (model, method) differ in data and rate only: they reuse
    # the first run's compiled programs from this on-disk cache.
    jax.config.update('jax_compilation_cache_dir',
                      str(pathlib.Path(args.data_dir) / 'xla_cache'))
  if args.screen:
    spec = quick_screen() if args.quick else full_screen()
    print(screen(spec, out, args.data_dir, train_missing=not args.report_only))
    return
  if not args.report_only:
    run(study, out, args.data_dir)
  print(report(study, out))


if __name__ == '__main__':
  main()
