"""Where each run of a study lives: its key, and the folder layout, written and read here only.

Under a study's folder (``results/``) every run is one training workdir:

  runs/<model>/<method>/lr<rate>/seed<seed>          a study run            (:class:`RunKey`)
  runs_doubled/<model>/<method>/lr<rate>/seed<seed>  one at twice the epochs (``doubled``)
  pilot/<width>/<model>/epochs<epochs>               a pilot candidate      (:class:`PilotKey`)
  pilot/width<width>/<model>/confirm                 the depth pilot        (:class:`DepthPilotKey`)
  screen/<method>/lr<rate>                           a screening run        (:class:`ScreenKey`)

``<rate>`` is written with ``:g`` (six significant digits) and ``<width>`` as
``width<w>``, or ``default_width`` for the models' own. :func:`parse` reads a
folder back into its key and refuses any folder this layout would not write.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Optional, Union

LAYOUT = ('runs/<model>/<method>/lr<rate>/seed<seed>, '
          'runs_doubled/<model>/<method>/lr<rate>/seed<seed>, '
          'pilot/<width>/<model>/epochs<epochs>, pilot/width<width>/<model>/confirm, '
          'screen/<method>/lr<rate>')


def _rate(rate: float) -> str:
  return f'lr{rate:g}'


def _read_rate(folder: str) -> float:
  rate = float(_after('lr', folder))
  if not (math.isfinite(rate) and rate > 0):
    raise ValueError(f'{folder!r}: a rate is positive and finite')
  return rate


def _after(prefix: str, folder: str) -> str:
  """What follows ``prefix`` in a folder's name; a ValueError if the name does not start so."""
  if not folder.startswith(prefix):
    raise ValueError(f'{folder!r} does not start with {prefix!r}')
  return folder[len(prefix):]


def _count(prefix: str, folder: str) -> int:
  digits = _after(prefix, folder)
  if not digits.isdigit():
    raise ValueError(f'{folder!r}: {prefix} takes a whole number')
  return int(digits)


def _width(width: Optional[int]) -> str:
  return 'default_width' if width is None else f'width{width}'


def _read_width(folder: str) -> Optional[int]:
  return None if folder == 'default_width' else _count('width', folder)


@dataclasses.dataclass(frozen=True)
class RunKey:
  """A study run: one (model, method) at one peak rate and seed, in the study's regime.

  ``doubled``: the same run at twice the regime's epochs, in its own folder.
  """
  model: str
  method: str
  rate: float
  seed: int
  doubled: bool = False

  def parts(self) -> tuple[str, ...]:
    return ('runs_doubled' if self.doubled else 'runs', self.model, self.method,
            _rate(self.rate), f'seed{self.seed}')

  @classmethod
  def from_parts(cls, parts: tuple[str, ...]) -> RunKey:
    top, model, method, rate, seed = parts
    return cls(model, method, _read_rate(rate), _count('seed', seed), top == 'runs_doubled')


@dataclasses.dataclass(frozen=True)
class PilotKey:
  """A candidate of the pilot that fixes a study's regime: a model at a base width and length."""
  width: Optional[int]  # None: the models' default width
  model: str
  epochs: int

  def parts(self) -> tuple[str, ...]:
    return ('pilot', _width(self.width), self.model, f'epochs{self.epochs}')

  @classmethod
  def from_parts(cls, parts: tuple[str, ...]) -> PilotKey:
    _, width, model, epochs = parts
    return cls(_read_width(width), model, _count('epochs', epochs))


@dataclasses.dataclass(frozen=True)
class DepthPilotKey:
  """The confirmatory study's pilot of the depth models: one at a base width, the study's length."""
  width: int
  model: str = 'independent_depth'

  def parts(self) -> tuple[str, ...]:
    return ('pilot', f'width{self.width}', self.model, 'confirm')

  @classmethod
  def from_parts(cls, parts: tuple[str, ...]) -> DepthPilotKey:
    _, width, model, _ = parts
    return cls(_count('width', width), model)


@dataclasses.dataclass(frozen=True)
class ScreenKey:
  """A screening run: one method at one peak rate (the screen fixes model, regime and seed)."""
  method: str
  rate: float

  def parts(self) -> tuple[str, ...]:
    return ('screen', self.method, _rate(self.rate))

  @classmethod
  def from_parts(cls, parts: tuple[str, ...]) -> ScreenKey:
    _, method, rate = parts
    return cls(method, _read_rate(rate))


Key = Union[RunKey, PilotKey, DepthPilotKey, ScreenKey]
TOP_FOLDERS = ('pilot', 'runs', 'runs_doubled', 'screen')  # each holds runs of one layout only


def _kind(parts: tuple[str, ...]) -> type[Key]:
  if parts[0] in ('runs', 'runs_doubled'):
    return RunKey
  if parts[0] == 'pilot':
    return DepthPilotKey if parts[-1] == 'confirm' else PilotKey
  if parts[0] == 'screen':
    return ScreenKey
  raise ValueError(f'{parts[0]!r} is none of {TOP_FOLDERS}')


def parse(folder: Union[str, pathlib.PurePath]) -> Key:
  """The key of a run's folder, relative to the study's folder (the inverse of ``parts``).

  Raises ValueError for a folder this layout does not write (``lr0.10``, a
  missing seed, an unknown top folder), naming the layout.
  """
  parts = pathlib.PurePath(folder).parts
  try:
    key = _kind(parts).from_parts(parts)
  except (ValueError, IndexError) as e:
    raise ValueError(f'{folder} is not a run folder ({e}); the layout: {LAYOUT}') from None
  if key.parts() != parts:
    raise ValueError(f'{folder} is not a run folder: this layout writes it as '
                     f"{'/'.join(key.parts())}; the layout: {LAYOUT}")
  return key
