"""How fast a combination's weights move during training: evidence for refreshing them every N steps.

  python -m experiments.drift [--models nested_width,branched] [--steps 384] [--skip 0]
                              [--epochs 3] [--json PATH]

With ``'global'`` granularity a combination's update is ``sum_k w_k g_k``, the
gradient of ``sum_k w_k L_k``: once the K weights are known, one ordinary
backward pass gives it. Whether weights computed every N steps would do
depends on how far they move in N steps. This trains each model as
``experiments.train`` does (its defaults: ``osgd_global``, the main job's
schedule; ``--learning_rate`` and ``--epochs`` change both), reads the weights
``w_t [K]`` after each of ``--steps`` steps (after the first ``--skip``) and reports, per lag
d, the cosine between ``w_t`` and ``w_{t+d}`` and their relative change
``|w_{t+d} - w_t| / |w_t|`` (median and 10th / 90th percentiles over t), and
how often some weight was negative.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import anytime_jax as aj
from experiments import data, optimizers, train

LAGS = (1, 2, 4, 8, 16, 32)


def weight_trace(config: train.Config, steps: int, data_dir: str,
                 source_dir: str | None = None, skip: int = 0) -> np.ndarray:
  """``[steps, K]``: the combination's weights after each of ``steps`` steps after ``skip``."""
  dataset = data.load(config.dataset, data_dir, source_dir)
  dataset, _ = train.split_validation(dataset, config.validation_size, config.seed)
  steps_per_epoch = data.num_train_batches(dataset, config.batch_size)
  network = train.build_network(config, dataset)
  tx, gradients = optimizers.make(config.optimizer, config, steps_per_epoch * config.epochs,
                                  steps_per_epoch)
  if not gradients.per_exit or config.optimizer not in optimizers.PER_EXIT:
    raise SystemExit(f'error: --optimizer {config.optimizer} has no combination weights.')
  example = jnp.zeros((1, *dataset.image_shape), jnp.float32)
  state = aj.create_train_state(network, tx, jax.random.key(config.seed), example)
  step_fn = jax.jit(aj.make_train_step(network, tx, gradients=gradients))

  @jax.jit
  def step(state, x, y):
    state, _ = step_fn(state, x, y)
    return state, aj.find_diagnostics(state.opt_state).weights[0]  # the one 'global' group

  trace, done = [], 0
  for epoch in range(config.epochs):
    for x, y in data.train_batches(dataset, config.batch_size, seed=config.seed, epoch=epoch):
      state, weights = step(state, x, y)
      done += 1
      if done > skip:
        trace.append(weights)
      if len(trace) == steps:
        return np.asarray(jax.device_get(trace))
  return np.asarray(jax.device_get(trace))


def drift(trace: np.ndarray, lags=LAGS) -> dict:
  """Per lag: cosine and relative change between weights d steps apart, over all t."""
  rows = {}
  norms = np.linalg.norm(trace, axis=1)
  for d in lags:
    if d >= len(trace):
      break
    a, b = trace[:-d], trace[d:]
    cosine = np.sum(a * b, axis=1) / np.maximum(norms[:-d] * norms[d:], 1e-30)
    change = np.linalg.norm(b - a, axis=1) / np.maximum(norms[:-d], 1e-30)
    rows[d] = {name: [float(np.percentile(v, q)) for q in (10, 50, 90)]
               for name, v in (('cosine', cosine), ('relative_change', change))}
  return {'lags': rows, 'negative_fraction': float(np.mean(np.any(trace < 0, axis=1))),
          'steps': len(trace)}


def format_table(results: dict) -> str:
  lines = ['| run | steps | negative weight | lag d | cosine (p10 / median / p90) | '
           'relative change (p10 / median / p90) |', '|---|---|---|---|---|---|']
  for name, r in results.items():
    for d, row in r['drift']['lags'].items():
      cos, change = row['cosine'], row['relative_change']
      lines.append(f"| {name} | {r['drift']['steps']} | {r['drift']['negative_fraction']:.1%} | "
                   f'{d} | {cos[0]:.4f} / {cos[1]:.4f} / {cos[2]:.4f} | '
                   f'{change[0]:.3f} / {change[1]:.3f} / {change[2]:.3f} |')
  return '\n'.join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--models', default='nested_width,branched')
  parser.add_argument('--optimizer', default=train.Config.optimizer)
  parser.add_argument('--steps', type=int, default=384, help='steps recorded')
  parser.add_argument('--skip', type=int, default=0, help='steps trained before recording')
  parser.add_argument('--learning_rate', type=float, default=None,
                      help="default: the trainer's")
  parser.add_argument('--epochs', type=int, default=train.Config.epochs,
                      help='the schedule the steps follow (warmup, cosine decay)')
  parser.add_argument('--data_dir', default=data.DEFAULT_DATA_DIR)
  parser.add_argument('--source_dir', default=None)
  parser.add_argument('--json', default=None,
                      help='also write the traces and results here (merged into what it holds)')
  args = parser.parse_args(argv)
  path = pathlib.Path(args.json) if args.json else None
  results = json.loads(path.read_text()) if path and path.exists() else {}
  for name in args.models.split(','):
    config = train.Config(model=name, optimizer=args.optimizer, epochs=args.epochs,
                          **({} if args.learning_rate is None
                             else {'learning_rate': args.learning_rate}))
    trace = weight_trace(config, args.steps, args.data_dir, args.source_dir, args.skip)
    key = f'{name}, {config.epochs} epochs at {config.learning_rate}, steps {args.skip}+'
    results[key] = {'config': dataclasses.asdict(config), 'skip': args.skip,
                    'drift': drift(trace), 'weights': trace.tolist()}
  print(format_table(results))
  if path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(results))
    tmp.replace(path)  # atomic: a killed run leaves the old file


if __name__ == '__main__':
  main()
