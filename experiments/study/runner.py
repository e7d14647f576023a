"""Trains the runs a study's folder lacks, each with :func:`experiments.train.train_and_evaluate`.

A finished run is read back, never retrained; an interrupted one resumes from
its checkpoint; a run whose loss diverged is recorded (``diverged.json``) and
read back as :class:`~experiments.study.store.Diverged`.
"""

from __future__ import annotations

import json
import sys
from typing import Callable

from experiments import train
from experiments.checkpoint import atomic_write
from experiments.study.keys import Key
from experiments.study.regime import Regime
from experiments.study.store import Outcome, Source, Store


class Runner:
  """Trains into ``store``'s folders, with the data under ``data_dir``."""

  def __init__(self, store: Store, data_dir: str):
    self.store = store
    self.data_dir = data_dir

  def ensure(self, key: Key, config: train.Config) -> Outcome:
    """Trains the run unless it has finished (or diverged) before; returns its outcome."""
    done = self.store.outcome(key)
    if done is not None:
      return done
    workdir = self.store.workdir(key)
    print(f'== {workdir}', file=sys.stderr, flush=True)
    try:
      train.train_and_evaluate(config, workdir, data_dir=self.data_dir)
    except train.Diverged as e:
      print(e, file=sys.stderr, flush=True)
      workdir.mkdir(parents=True, exist_ok=True)
      atomic_write(workdir / 'diverged.json', json.dumps({'step': e.step, 'message': str(e)}))
    done = self.store.outcome(key)
    if done is None:
      raise RuntimeError(f'{workdir}: training returned without results.json')
    return done

  def training(self, regime: Regime, num_exits: Callable[[str], int]) -> Source:
    """The study runs of ``regime`` as a source: each trained unless it has run before."""
    return lambda key: self.ensure(key, regime.run_config(key, num_exits(key.model)))
