"""A study's compute: the summed training time of its finished runs, per part."""

from __future__ import annotations

from typing import NamedTuple


class ComputePart(NamedTuple):
  """Finished runs of one part of a study: how many, and their summed ``train_seconds``."""
  runs: int
  seconds: float


def compute_line(parts: dict[str, ComputePart]) -> str:
  """The report's compute line (empty without a finished run), parts in the given order."""
  if not parts:
    return ''
  total = sum(seconds for _, seconds in parts.values())
  return ('\nCompute (ours): summed training time of the finished runs, sweeps included '
          '(it also counts time a run sat paused or shared the CPU): ' + ', '.join(
              f'{name} {runs} runs {seconds / 60:.0f} min' for name, (runs, seconds)
              in parts.items()) + f'; in all {total / 3600:.1f} h.\n')
