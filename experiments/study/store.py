"""The finished runs under a study's folder, read back: outcomes, learning curves, compute.

Read-only: a :class:`Store` never writes and never creates a folder; the
:class:`~experiments.study.runner.Runner` trains what it lacks.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Callable, Optional, TypedDict, Union

from experiments.study.compute import ComputePart
from experiments.study.keys import TOP_FOLDERS, Key, RunKey, parse


class ExitResult(TypedDict):
  """One exit of a finished run (``results.json``): cumulative FLOPs and params, accuracies."""
  exit: int
  flops: float
  params: int
  test_accuracy: float
  validation_accuracy: float


@dataclasses.dataclass(frozen=True)
class Finished:
  """A finished run: per exit, the budgeted-batch early-exit curve, and its training time."""
  exits: list[ExitResult]
  budgeted_batch: list[dict[str, Any]]  # points {'q', 'flops', 'accuracy', ...}, as written
  train_seconds: float

  @classmethod
  def from_results(cls, results: dict[str, Any]) -> Finished:
    return cls(results['exits'], results['budgeted_batch'], results['train_seconds'])

  @property
  def test_accuracy(self) -> list[float]:
    return [e['test_accuracy'] for e in self.exits]

  @property
  def validation_accuracy(self) -> list[float]:
    return [e['validation_accuracy'] for e in self.exits]

  @property
  def mflops(self) -> list[float]:
    return [e['flops'] / 1e6 for e in self.exits]

  @property
  def params(self) -> list[int]:
    return [e['params'] for e in self.exits]


@dataclasses.dataclass(frozen=True)
class Diverged:
  """A run whose loss diverged (``diverged.json``), at this step."""
  step: int


Outcome = Union[Finished, Diverged]
# Where a study reads its runs from: Store.outcome reads, Runner.training trains what is missing.
Source = Callable[[RunKey], Optional[Outcome]]


class Store:
  """The runs under ``out``, one folder per key (:mod:`experiments.study.keys`)."""

  def __init__(self, out: pathlib.Path):
    self.out = pathlib.Path(out)

  def workdir(self, key: Key) -> pathlib.Path:
    return self.out.joinpath(*key.parts())

  def outcome(self, key: Key) -> Optional[Outcome]:
    """The run's results, :class:`Diverged` if its loss diverged, None if it has not run."""
    workdir = self.workdir(key)
    if (workdir / 'results.json').exists():
      return Finished.from_results(json.loads((workdir / 'results.json').read_text()))
    if (workdir / 'diverged.json').exists():
      return Diverged(json.loads((workdir / 'diverged.json').read_text())['step'])
    return None

  def learning_curve(self, key: Key) -> list[dict[str, Any]]:
    """The run's per-epoch records (``metrics.jsonl``); empty before its first epoch."""
    path = self.workdir(key) / 'metrics.jsonl'
    if not path.exists():
      return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]

  def compute_parts(self, part_of: Callable[[Key], Optional[str]]) -> dict[str, ComputePart]:
    """The finished runs per part, in folder order: how many, their summed ``train_seconds``.

    ``part_of`` names the part a run's key belongs to, or None for a run not
    counted. Only the layout's folders are read (not a study in a subfolder, as
    ``results/cifar10``); a folder there that is no run's raises ValueError.
    """
    paths = sorted(path for top in TOP_FOLDERS
                   for path in (self.out / top).glob('**/results.json'))
    parts: dict[str, ComputePart] = {}
    for path in paths:
      name = part_of(parse(path.parent.relative_to(self.out)))
      if name is None:
        continue
      runs, seconds = parts.get(name, ComputePart(0, 0.0))
      parts[name] = ComputePart(runs + 1, seconds + json.loads(path.read_text())['train_seconds'])
    return parts
