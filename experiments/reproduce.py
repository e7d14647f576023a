"""The reproduction study: every model trained with OSGD and the baselines, over seeds.

  python -m experiments.reproduce                 # the study on Fashion-MNIST, resumable
  python -m experiments.reproduce --quick         # a smoke run on digits (CI)
  python -m experiments.reproduce --report_only   # tables and plots from the finished runs

Protocol (DESIGN.md 2.5): every method gets the same learning-rate sweep on
seed 0 of the sweep model (the study's first); the rate with the best
validation accuracy (mean over exits, validation = training images held out)
is then used for that method on the other seeds and on every other model, and
test accuracy is reported at that rate. Same seed = same initialization and
data order for every method, so differences are paired. A run whose loss
diverges is recorded as such (it scores lowest in the sweep). Every run is one
`experiments.train` workdir under --out/runs; finished runs are skipped and an
interrupted one resumes, so the study can be continued across sittings.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
import sys

import jax
import numpy as np

from experiments import train
from experiments.checkpoint import atomic_write


@dataclasses.dataclass(frozen=True)
class Study:
  """One study: its runs are models x methods x seeds at each method's chosen rate."""
  dataset: str
  models: dict  # name -> num_exits; the first is the sweep model
  methods: tuple  # trained on every model
  seeds: tuple
  learning_rates: tuple  # swept on the sweep model, seed 0
  epochs: int
  max_steps_per_epoch: int | None  # None: whole epochs
  batch_size: int = 128
  sweep_model_methods: tuple = ()  # trained on the sweep model only

  @property
  def sweep_model(self) -> str:
    return next(iter(self.models))

  def methods_of(self, model: str) -> tuple:
    return self.methods + (self.sweep_model_methods if model == self.sweep_model else ())


DATASETS = ('fashion_mnist', 'cifar10', 'cifar100')


def full_study(dataset: str = 'fashion_mnist') -> Study:
  """The study's models and methods; on Fashion-MNIST sized for a CPU.

  Fashion-MNIST: 1 epoch of 150 steps of 128 images per run (19,200 images,
  about a third of the training split), which fits the whole study into a few
  hours on 2 CPU cores. CIFAR-10/100: the same configurations with a
  full-length schedule (200 epochs, crop-and-flip augmentation), for users with
  accelerators and the data.
  """
  if dataset not in DATASETS:
    raise ValueError(f'unknown dataset {dataset!r}; the study runs on one of {DATASETS}')
  cpu_sized = dataset == 'fashion_mnist'
  return Study(
      dataset=dataset,
      models={'nested_width': 4, 'branched': 4, 'nested_depth': 4, 'nested_both': 3},
      methods=('sgd', 'osgd', 'osgd_global', 'osgd_exit_norm', 'pcgrad', 'mgda', 'adaloss'),
      sweep_model_methods=('sgd_mean',),
      seeds=(0, 1, 2), learning_rates=(0.05, 0.1, 0.2, 0.4), epochs=1 if cpu_sized else 200,
      max_steps_per_epoch=150 if cpu_sized else None)


def quick_study() -> Study:
  return Study(dataset='digits', models={'nested_width': 3, 'branched': 3},
               methods=('sgd', 'osgd'), seeds=(0,), learning_rates=(0.1,), epochs=1,
               max_steps_per_epoch=8, batch_size=32)


def _run_dir(out, model, method, lr, seed):
  return out / 'runs' / model / method / f'lr{lr}' / f'seed{seed}'


def run_cell(study: Study, out: pathlib.Path, model: str, method: str, lr: float, seed: int,
             data_dir: str) -> dict:
  """Trains one run unless it has finished (or diverged) before; returns its outcome."""
  workdir = _run_dir(out, model, method, lr, seed)
  if _outcome(out, model, method, lr, seed) is None:
    print(f'== {model} {method} lr={lr} seed={seed}', file=sys.stderr, flush=True)
    num_exits = study.models.get(model, study.models[study.sweep_model])
    argv = ['--model', model, '--optimizer', method, '--dataset', study.dataset,
            '--num_exits', str(num_exits), '--epochs', str(study.epochs),
            '--batch_size', str(study.batch_size), '--learning_rate', str(lr),
            '--seed', str(seed), '--workdir', str(workdir), '--data_dir', data_dir]
    if study.max_steps_per_epoch:
      argv += ['--max_steps_per_epoch', str(study.max_steps_per_epoch)]
    try:
      train.main(argv)
    except train.Diverged as e:
      print(e, file=sys.stderr, flush=True)
      workdir.mkdir(parents=True, exist_ok=True)
      atomic_write(workdir / 'diverged.json', json.dumps({'step': e.step, 'message': str(e)}))
  return _outcome(out, model, method, lr, seed)


def _outcome(out, model, method, lr, seed):
  """The run's results, {'diverged': step} if its loss diverged, None if not run yet."""
  workdir = _run_dir(out, model, method, lr, seed)
  if (workdir / 'results.json').exists():
    return json.loads((workdir / 'results.json').read_text())
  if (workdir / 'diverged.json').exists():
    return {'diverged': json.loads((workdir / 'diverged.json').read_text())['step']}
  return None


def _score(outcome: dict) -> float:
  if 'diverged' in outcome:
    return -math.inf
  return float(np.mean([e['validation_accuracy'] for e in outcome['exits']]))


def best_rate(study, out, method):
  """The rate with the best seed-0 validation score on the sweep model; None before its sweep."""
  scores = {}
  for lr in study.learning_rates:
    outcome = _outcome(out, study.sweep_model, method, lr, study.seeds[0])
    if outcome is None:
      return None
    scores[lr] = _score(outcome)
  return max(scores, key=scores.get)


def run(study: Study, out: pathlib.Path, data_dir: str) -> None:
  # The sweep model first (its sweep fixes every rate), then the independent
  # networks (the reference every model is compared to), then the other
  # models; cell by cell, so that a study cut short leaves whole cells.
  for method in study.methods_of(study.sweep_model):
    for lr in study.learning_rates:
      run_cell(study, out, study.sweep_model, method, lr, study.seeds[0], data_dir)
    for seed in study.seeds[1:]:
      run_cell(study, out, study.sweep_model, method, best_rate(study, out, method), seed,
               data_dir)
  for seed in study.seeds:
    run_cell(study, out, 'independent', 'sgd', best_rate(study, out, 'sgd'), seed, data_dir)
  for model in list(study.models)[1:]:
    for method in study.methods_of(model):
      for seed in study.seeds:
        run_cell(study, out, model, method, best_rate(study, out, method), seed, data_dir)


def summarize(study: Study, out: pathlib.Path) -> dict:
  """Per (model, method): chosen rate and per-exit test accuracy over the finished seeds."""
  rows = {}
  pairs = [(m, k) for m in study.models for k in study.methods_of(m)] + [('independent', 'sgd')]
  for model, method in pairs:
    lr = best_rate(study, out, method)
    if lr is None:
      continue
    outcomes = {s: _outcome(out, model, method, lr, s) for s in study.seeds}
    runs = {s: r for s, r in outcomes.items() if r and 'diverged' not in r}
    if not runs:
      continue
    acc = np.array([[e['test_accuracy'] for e in r['exits']] for r in runs.values()])
    first = next(iter(runs.values()))
    rows[f'{model}/{method}'] = {
        'model': model, 'method': method, 'learning_rate': lr, 'seeds': sorted(runs),
        'diverged_seeds': sorted(s for s, r in outcomes.items() if r and 'diverged' in r),
        'mflops': [e['flops'] / 1e6 for e in first['exits']],
        'mean': acc.mean(0).tolist(), 'std': acc.std(0).tolist(),
        'per_seed': {s: [e['test_accuracy'] for e in r['exits']] for s, r in runs.items()},
        'budgeted_batch': first['budgeted_batch'],  # of the first finished seed
        'budgeted_batch_exits': [e['test_accuracy'] for e in first['exits']]}
  return rows


def _paired(a: dict | None, b: dict | None):
  """[S, K] per-seed differences of per-exit test accuracy, row a minus row b; None if no seed."""
  seeds = sorted(set(a['per_seed']) & set(b['per_seed'])) if a and b else []
  if not seeds:
    return None, []
  return np.array([np.subtract(a['per_seed'][s], b['per_seed'][s]) for s in seeds]), seeds


def paired_difference(a: dict | None, b: dict | None) -> dict | None:
  """Per-exit test accuracy of row a minus row b over their common seeds; None if none."""
  diff, seeds = _paired(a, b)
  if diff is None:
    return None
  return {'seeds': seeds, 'mean': diff.mean(0).tolist(), 'std': diff.std(0).tolist()}


def pooled_difference(study: Study, rows: dict, method: str, baseline: str = 'sgd'):
  """Method minus baseline pooled over every (model, seed) pair: first exit, last, exit mean."""
  diffs = [d for d, _ in (_paired(rows.get(f'{m}/{method}'), rows.get(f'{m}/{baseline}'))
                          for m in study.models) if d is not None]
  if not diffs:
    return None
  pooled = np.concatenate([np.stack([d[:, 0], d[:, -1], d.mean(1)], 1) for d in diffs])
  n = len(pooled)
  # Paired t statistic of the mean over exits: |t| >= 2 is what we call a clear difference.
  spread = pooled[:, 2].std(ddof=1) if n > 1 else np.nan
  t = pooled[:, 2].mean() / (spread / np.sqrt(n)) if n > 1 and spread > 0 else np.nan
  return {'pairs': n, 'models': len(diffs), 'mean': pooled.mean(0).tolist(),
          'std': pooled.std(0).tolist(), 't': float(t)}


def markdown(study: Study, rows: dict) -> str:
  def points(means, stds, sign=''):  # accuracy fractions as percent or points, mean ± std
    return [f'{100 * m:{sign}.2f} ± {100 * s:.2f}' for m, s in zip(means, stds)]

  cap = f'at most {study.max_steps_per_epoch} ' if study.max_steps_per_epoch else ''
  lines = [f'Study on {study.dataset} (ours): {study.epochs} epoch(s) of {cap}'
           f'steps of {study.batch_size} images per run; rates '
           f'swept on seed 0 of {study.sweep_model} over {list(study.learning_rates)}, chosen per '
           'method on validation and used on every model ("top": the largest rate swept won); test '
           'accuracy (%) mean ± std over the seeds (runs whose loss diverged are counted apart).',
           '',
           '| model | method | lr | seeds | MFLOPs per exit | test accuracy per exit |',
           '|---|---|---|---|---|---|']
  for r in rows.values():
    seeds = f"{len(r['seeds'])}" + (f" (+{len(r['diverged_seeds'])} diverged)"
                                     if r['diverged_seeds'] else '')
    top = ' (top)' if r['learning_rate'] == max(study.learning_rates) else ''
    lines.append(f"| {r['model']} | {r['method']} | {r['learning_rate']}{top} | {seeds} "
                 f"| {' / '.join(f'{f:.2f}' for f in r['mflops'])} "
                 f"| {' / '.join(points(r['mean'], r['std']))} |")
  def differences(title, pairs):
    lines.extend(['', title, '', '| model | method | seeds | difference per exit |',
                  '|---|---|---|---|'])
    for model, method, a, b in pairs:
      d = paired_difference(a, b)
      if d:
        lines.append(f"| {model} | {method} | {len(d['seeds'])} | "
                     + ' / '.join(points(d['mean'], d['std'], '+')) + ' |')

  differences('Paired difference, method minus `sgd` (summed losses) on the same model, same '
              'seeds, accuracy points per exit:',
              [(model, method, rows.get(f'{model}/{method}'), rows.get(f'{model}/sgd'))
               for model in study.models for method in study.methods_of(model)
               if method != 'sgd'])
  differences(f'Nested minus independent: exit k of {study.sweep_model} against independent '
              'network k of the same width (trained with `sgd`), same seeds, accuracy points '
              'per exit:',
              [(study.sweep_model, method, rows.get(f'{study.sweep_model}/{method}'),
                rows.get('independent/sgd')) for method in study.methods_of(study.sweep_model)])
  lines.extend(['', 'Pooled over models: one pair per (model, seed), accuracy points (the OSGD '
                'variants are also compared with plain `osgd`, which decides its defaults); t: '
                'paired t statistic of the mean over exits:', '',
                '| method | minus | models | pairs | first exit | last exit | mean over exits | t |',
                '|---|---|---|---|---|---|---|---|'])
  methods = list(dict.fromkeys(m for model in study.models for m in study.methods_of(model)))
  comparisons = [(m, 'sgd') for m in methods if m != 'sgd'] + [
      (m, 'osgd') for m in methods if m.startswith('osgd_')]
  for method, baseline in comparisons:
    d = pooled_difference(study, rows, method, baseline)
    if d:
      lines.append(f"| {method} | {baseline} | {d['models']} | {d['pairs']} | "
                   + ' | '.join(points(d['mean'], d['std'], '+')) + f" | {d['t']:+.1f} |")
  return '\n'.join(lines) + '\n'


def plot(study: Study, rows: dict, out: pathlib.Path) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  models = list(study.models)
  fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.6), squeeze=False)
  reference = rows.get('independent/sgd')
  for ax, model in zip(axes[0], models):
    for r in rows.values():
      if r['model'] == model:
        ax.errorbar(r['mflops'], 100 * np.array(r['mean']), yerr=100 * np.array(r['std']),
                    marker='o', capsize=2, label=r['method'])
    if reference:
      ax.errorbar(reference['mflops'], 100 * np.array(reference['mean']),
                  yerr=100 * np.array(reference['std']), color='k', ls='--', marker='s',
                  label='independent')
    ax.set_xscale('log')
    ax.set_title(model)
    ax.set_xlabel('MFLOPs (cumulative)')
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel('test accuracy (%)')
  axes[0][0].legend(fontsize=7)  # the first panel fills first in a study cut short
  fig.tight_layout()
  fig.savefig(out / 'accuracy_vs_flops.png', dpi=110)
  plt.close(fig)
  anytime = {k: r for k, r in rows.items() if r['model'] != 'independent'}
  if anytime:
    best = max(anytime.values(), key=lambda r: r['mean'][-1])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    curve = best['budgeted_batch']
    ax.plot([p['flops'] / 1e6 for p in curve], [100 * p['accuracy'] for p in curve], '.-',
            label=f"{best['model']} + {best['method']} early exit (seed {best['seeds'][0]})")
    ax.plot(best['mflops'], 100 * np.array(best['budgeted_batch_exits']), 'o',
            label=f"single exits (seed {best['seeds'][0]})")
    ax.set_xscale('log')
    ax.set_xlabel('average MFLOPs per image')
    ax.set_ylabel('test accuracy (%)')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / 'budgeted_batch.png', dpi=110)
    plt.close(fig)


def report(study: Study, out: pathlib.Path) -> str:
  rows = summarize(study, out)
  text = markdown(study, rows)
  atomic_write(out / 'study.md', text)
  atomic_write(out / 'summary.json', json.dumps(rows, indent=1))
  plot(study, rows, out)
  return text


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--dataset', default='fashion_mnist', choices=DATASETS,
                      help='cifar10/cifar100: the full-length study (needs an accelerator)')
  parser.add_argument('--out', default=None,
                      help='default: results/ (results/<dataset>/ for CIFAR, results/quick/ '
                      'with --quick)')
  parser.add_argument('--data_dir', default=train.data.DEFAULT_DATA_DIR)
  parser.add_argument('--quick', action='store_true', help='a smoke run on digits')
  parser.add_argument('--report_only', action='store_true')
  args = parser.parse_args(argv)
  study = quick_study() if args.quick else full_study(args.dataset)
  default_out = ('results/quick' if args.quick else
                 'results' if args.dataset == 'fashion_mnist' else f'results/{args.dataset}')
  out = pathlib.Path(args.out or default_out)
  out.mkdir(parents=True, exist_ok=True)
  if not jax.config.jax_compilation_cache_dir:
    # The seeds of one (model, method, rate) differ in data only: they reuse
    # the first seed's compiled programs from this on-disk cache.
    jax.config.update('jax_compilation_cache_dir',
                      str(pathlib.Path(args.data_dir) / 'xla_cache'))
  if not args.report_only:
    run(study, out, args.data_dir)
  print(report(study, out))


if __name__ == '__main__':
  main()
