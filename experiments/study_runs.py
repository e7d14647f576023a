"""Runs of a study: the regime they share, where each lives, and its outcome.

Every run is one :func:`experiments.train.train_and_evaluate` workdir; a
finished run is read back, never retrained, an interrupted one resumes from its
checkpoint, and a run whose loss diverged is recorded as such.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
from typing import Optional

from experiments import train
from experiments.checkpoint import atomic_write


# Study models that are one of the library's networks with options: name -> (network, fields).
VARIANTS = {'independent_depth': ('independent', {'growth': 'depth'})}


def method_variant(method: str) -> tuple[str, dict]:
  """A study method as the trainer's optimizer and options.

  ``<optimizer>_every<N>`` is the optimizer with its combination's weights
  refreshed every N steps (``--refresh_every N``, :func:`anytime_jax.amortize`).
  """
  optimizer, every, n = method.rpartition('_every')
  if every and n.isdigit():
    return optimizer, {'refresh_every': int(n)}
  return method, {}


@dataclasses.dataclass(frozen=True)
class Regime:
  """What every run of a study shares: data, length and schedule."""
  dataset: str
  epochs: int
  train_size: Optional[int] = None  # None: the whole training split less validation
  batch_size: int = 128
  max_steps_per_epoch: Optional[int] = None
  warmup_fraction: float = 0.05  # of all steps, linear, then cosine decay
  width: Optional[int] = None  # base width of the nested and independent networks (None: default)
  width_factor: tuple = (('branched', 4),)  # a model's width is this times the base width
  fixed_widths: tuple = ()  # (model, width) pairs that override the base width

  def model_width(self, model: str) -> Optional[int]:
    if model in dict(self.fixed_widths):
      return dict(self.fixed_widths)[model]
    return None if self.width is None else self.width * dict(self.width_factor).get(model, 1)

  def config(self, model: str, method: str, learning_rate: float, seed: int, num_exits: int,
             eval_every: int = 0) -> train.Config:
    network, fields = VARIANTS.get(model, (model, {}))
    optimizer, method_fields = method_variant(method)
    return train.Config(
        width=self.model_width(model), **fields, **method_fields,
        model=network, optimizer=optimizer, dataset=self.dataset, epochs=self.epochs,
        batch_size=self.batch_size, learning_rate=learning_rate,
        warmup_epochs=self.warmup_fraction * self.epochs, num_exits=num_exits,
        train_size=self.train_size, max_steps_per_epoch=self.max_steps_per_epoch, seed=seed,
        eval_every=eval_every)


def outcome(workdir: pathlib.Path) -> Optional[dict]:
  """The run's results, ``{'diverged': step}`` if its loss diverged, None if not run yet."""
  if (workdir / 'results.json').exists():
    return json.loads((workdir / 'results.json').read_text())
  if (workdir / 'diverged.json').exists():
    return {'diverged': json.loads((workdir / 'diverged.json').read_text())['step']}
  return None


def learning_curve(workdir: pathlib.Path) -> list[dict]:
  """The run's per-epoch records (``metrics.jsonl``)."""
  path = workdir / 'metrics.jsonl'
  return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def ensure(workdir: pathlib.Path, config: train.Config, data_dir: str) -> dict:
  """Trains the run unless it has finished (or diverged) before; returns its outcome."""
  done = outcome(workdir)
  if done is not None:
    return done
  print(f'== {workdir}', file=sys.stderr, flush=True)
  try:
    train.train_and_evaluate(config, workdir, data_dir=data_dir)
  except train.Diverged as e:
    print(e, file=sys.stderr, flush=True)
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write(workdir / 'diverged.json', json.dumps({'step': e.step, 'message': str(e)}))
  return outcome(workdir)
