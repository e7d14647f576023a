"""The pilot that fixes a study's training budget before the study spends it.

A study can test the paper's claims only where (a) training longer no longer
changes much and (b) capacity matters: the independent networks' accuracy
rises clearly with their size. The pilot trains the summed-loss baseline
(``nested_width``) and the independent networks with SGD at several base widths
and lengths on the selection seed (never a reported seed), and :func:`choose`
picks the cheapest candidate where twice the epochs add less than
``doubling_points`` (where measured) and capacity matters: the smallest width
first, then the shortest length. The longest candidate has no doubling among
the candidates, so it is chosen on capacity alone and is what it is: a fixed
budget. :func:`run` then trains the baseline once more at twice that length
and reports the gain (:func:`plateau_check`): it says whether the budget is a
plateau, and decides nothing. (Under a cosine schedule that ends at zero the
last epoch's gain is near zero by construction, so it is not a criterion.)
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Optional

import numpy as np

from experiments.study.keys import PilotKey
from experiments.study.regime import Regime
from experiments.study.runner import Runner
from experiments.study.store import Store


@dataclasses.dataclass(frozen=True)
class Pilot:
  """Candidate lengths for one data regime, and the criteria they must meet."""
  dataset: str
  train_size: Optional[int]
  epochs: tuple[int, ...]  # increasing; each ideally double the one before
  widths: tuple = (None,)  # candidate base widths (None: the models' defaults)
  models: tuple[str, ...] = ('nested_width', 'independent')
  learning_rate: float = 0.1
  seed: int = 0  # the selection seed
  num_exits: int = 4
  batch_size: int = 128
  max_steps_per_epoch: Optional[int] = None
  doubling_points: float = 1.0  # (a) twice the epochs add less than this, where measured
  capacity_points: float = 3.0  # (b) largest minus smallest independent network at least this

  def regime(self, width: Optional[int], epochs: int) -> Regime:
    return Regime(self.dataset, epochs, self.train_size, self.batch_size,
                  self.max_steps_per_epoch, width=width)


def _ensure(pilot: Pilot, runner: Runner, width: Optional[int], model: str, epochs: int) -> None:
  config = pilot.regime(width, epochs).config(model, 'sgd', pilot.learning_rate, pilot.seed,
                                              pilot.num_exits, eval_every=1)
  runner.ensure(PilotKey(width, model, epochs), config)


def run(pilot: Pilot, runner: Runner) -> None:
  """Trains every candidate, then the baseline at twice the chosen length if unmeasured."""
  for width in pilot.widths:
    for model in pilot.models:
      for epochs in pilot.epochs:
        _ensure(pilot, runner, width, model, epochs)
  chosen, _ = choose(pilot, measure(pilot, runner.store))
  if chosen is not None and 2 * chosen[1] not in pilot.epochs:
    _ensure(pilot, runner, chosen[0], pilot.models[0], 2 * chosen[1])


def decided_regime(pilot: Pilot, store: Store) -> Optional[Regime]:
  """The study's regime once the pilot's finished runs have decided its length; None before."""
  chosen, _ = choose(pilot, measure(pilot, store))
  return None if chosen is None else pilot.regime(*chosen)


def _validation(curve: list[dict[str, Any]]) -> np.ndarray:
  """[epochs, K] validation accuracy of the epochs that recorded it."""
  return np.array([r['validation_accuracy'] for r in curve if 'validation_accuracy' in r])


def measure(pilot: Pilot, store: Store) -> dict:
  """Per (width, length): the criteria's numbers, from the finished pilot runs (in points)."""
  return {(width, epochs): row for width in pilot.widths
          for epochs, row in _measure_width(pilot, store, width).items()}


def _measure_width(pilot: Pilot, store: Store, width: Optional[int]) -> dict:
  rows = {}
  for epochs in pilot.epochs:
    base = _validation(store.learning_curve(PilotKey(width, pilot.models[0], epochs)))
    ref = _validation(store.learning_curve(PilotKey(width, pilot.models[1], epochs)))
    # Finished: the last epoch's record is there (a record lost to a kill leaves a gap only).
    last = lambda m: (store.learning_curve(PilotKey(width, m, epochs)) or
                      [{'epoch': 0}])[-1]['epoch']
    if any(last(m) < epochs for m in pilot.models):
      continue
    rows[epochs] = {
        'last_exit': 100 * base[-1, -1],
        'independent': (100 * ref[-1]).tolist(),
        'capacity_gain': 100 * (ref[-1, -1] - ref[-1, 0]),
    }
  for epochs, row in rows.items():
    longer = [e for e in rows if e > epochs]
    row['doubling_gain'] = (rows[min(longer)]['last_exit'] - row['last_exit']) if longer else np.nan
  return rows


def plateau_check(pilot: Pilot, store: Store, chosen: tuple) -> Optional[dict]:
  """The baseline at twice the chosen length: ``{'epochs', 'last_exit', 'gain'}`` in points.

  ``gain`` is its last exit's validation accuracy minus the chosen run's; None
  while that run has not finished (or twice the length is itself a candidate,
  whose doubling :func:`measure` reports).
  """
  width, epochs = chosen
  if 2 * epochs in pilot.epochs:
    return None
  base = _validation(store.learning_curve(PilotKey(width, pilot.models[0], 2 * epochs)))
  short = _validation(store.learning_curve(PilotKey(width, pilot.models[0], epochs)))
  if len(base) < 2 * epochs or len(short) < epochs:
    return None
  return {'epochs': 2 * epochs, 'last_exit': 100 * base[-1, -1],
          'gain': 100 * (base[-1, -1] - short[-1, -1])}


def _below(value: float, bound: float) -> bool:
  """``value < bound``; an unmeasured (NaN) value passes only an infinite bound."""
  return bound == math.inf or value < bound


def _width_order(width: Optional[int]) -> float:
  return -1 if width is None else width


def choose(pilot: Pilot, rows: dict) -> tuple[Optional[tuple], str]:
  """The cheapest ``(width, epochs)`` meeting every criterion, and why; None if none does.

  Candidates in order of cost: the smallest width first, then the shortest
  length. The longest length has no doubling to compare with: there the
  doubling criterion is not measured and does not decide.
  """
  for (width, epochs), r in sorted(rows.items(), key=lambda i: (_width_order(i[0][0]), i[0][1])):
    if ((math.isnan(r['doubling_gain']) or _below(r['doubling_gain'], pilot.doubling_points))
        and not _below(r['capacity_gain'], pilot.capacity_points)):
      named = 'default width' if width is None else f'base width {width}'
      doubling = ('a fixed budget: the longest candidate, so no doubling among the candidates '
                  'measured a plateau (see the plateau check)'
                  if math.isnan(r['doubling_gain']) else
                  f'twice the epochs add {r["doubling_gain"]:+.2f} (< {pilot.doubling_points})')
      return (width, epochs), (
          f'{named}, {epochs} epochs: {doubling}; the largest independent network is '
          f'{r["capacity_gain"]:+.2f} points above the smallest (>= {pilot.capacity_points}).')
  return None, ('no pilot candidate meets every criterion: train longer, or change the regime '
                '(see the table).')


def markdown(pilot: Pilot, rows: dict, store: Store) -> str:
  chosen, why = choose(pilot, rows)
  size = f'{pilot.train_size:,}' if pilot.train_size else 'all'
  lines = [
      f'Pilot on {pilot.dataset} (ours): {size} training images, SGD (summed losses), rate '
      f'{pilot.learning_rate}, selection seed {pilot.seed}, validation accuracy (%) after the last '
      f'epoch; `{pilot.models[0]}` is the baseline, `{pilot.models[1]}` the capacity check.', '',
      f'| base width | epochs | {pilot.models[0]} last exit '
      f'| twice the epochs add | {pilot.models[1]} per network | largest minus smallest |',
      '|---|---|---|---|---|---|']
  for (width, epochs), r in sorted(rows.items(), key=lambda i: (_width_order(i[0][0]), i[0][1])):
    doubling = 'not run' if math.isnan(r['doubling_gain']) else f"{r['doubling_gain']:+.2f}"
    lines.append(f"| {width or 'default'} | {epochs} | {r['last_exit']:.2f} "
                 f"| {doubling} | {' / '.join(f'{a:.2f}' for a in r['independent'])} "
                 f"| {r['capacity_gain']:+.2f} |")
  lines += ['', f'Chosen: {why}' if chosen else f'Not decided: {why}']
  if chosen is not None and (check := plateau_check(pilot, store, chosen)):
    plateau = check['gain'] < pilot.doubling_points
    lines += ['', f"Plateau check (reported, not deciding): `{pilot.models[0]}` trained for "
              f"{check['epochs']} epochs, twice the chosen length, reaches "
              f"{check['last_exit']:.2f} at its last exit, {check['gain']:+.2f} points over "
              f"{chosen[1]} epochs ({'below' if plateau else 'not below'} the doubling bound of "
              f"{pilot.doubling_points}): " + (
                  'the budget is near a plateau.' if plateau else
                  'the baseline has not plateaued; every comparison is at this fixed budget.')]
  return '\n'.join(lines) + '\n'


def plot(pilot: Pilot, store: Store, path: pathlib.Path) -> None:
  """Validation accuracy per epoch of every pilot run: a row per width, a panel per model."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(len(pilot.widths), len(pilot.models),
                           figsize=(5 * len(pilot.models), 3.4 * len(pilot.widths)),
                           squeeze=False)
  for row, width in zip(axes, pilot.widths):
    for ax, model in zip(row, pilot.models):
      _plot_runs(ax, pilot, store, width, model)
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_runs(ax, pilot: Pilot, store: Store, width: Optional[int], model: str) -> None:
  # The plateau check, where it ran, is drawn as one more length.
  for i, epochs in enumerate((*pilot.epochs, 2 * pilot.epochs[-1])):
    acc = _validation(store.learning_curve(PilotKey(width, model, epochs)))
    for k in range(acc.shape[1] if len(acc) else 0):
      ax.plot(np.arange(1, len(acc) + 1), 100 * acc[:, k],
              color=f'C{i}', alpha=0.4 + 0.6 * k / acc.shape[1],
              label=f'{epochs} epochs' if k == acc.shape[1] - 1 else None)
  ax.set_title(f"{model} (SGD), base width {width or 'default'}: every exit")
  ax.set_xlabel('epoch')
  ax.set_ylabel('validation accuracy (%)')
  ax.grid(alpha=0.3)
