"""Old module paths and names, kept for one release (0.3) with a warning that names the new one."""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from typing import Any

REMOVED_IN = '0.4'


def warn(old: str, new: str) -> None:
  warnings.warn(f'{old} is deprecated and will be removed in anytime-jax {REMOVED_IN}; use {new}.',
                DeprecationWarning, stacklevel=3)


def ignored_granularity(factory: str, granularity: Any) -> None:
  """Warns that ``granularity``, which a uniform weighting ignores, will stop being accepted."""
  if granularity is not None:
    warn(f'{factory}(granularity=...)', f'{factory}() without it: its weights are the same for '
         'every group of leaves, so granularity changes nothing')


def alias_module(old: str, sources: tuple[str, ...]) -> None:
  """Registers module ``old`` whose attributes come, with a warning, from ``sources`` in order."""
  module = types.ModuleType(old, f'Deprecated: use the names of `anytime_jax` ({REMOVED_IN}).')

  def lookup(name: str) -> Any:
    if name.startswith('__'):  # inspect, pickle and doctest probe these: not an old name
      raise AttributeError(name)
    for source in sources:
      found = importlib.import_module(source)
      if hasattr(found, name):
        warn(f'{old}.{name}', _public_name(name))
        return getattr(found, name)
    raise AttributeError(f'module {old!r} has no attribute {name!r}')

  module.__getattr__ = lookup  # type: ignore[method-assign]
  sys.modules[old] = module


def _public_name(name: str) -> str:
  for public in ('anytime_jax', 'anytime_jax.solvers', 'anytime_jax.gram', 'anytime_jax.models'):
    if name in getattr(importlib.import_module(public), '__all__', ()):
      return f'{public}.{name}'
  return 'the public names of anytime_jax (this one is private now)'
