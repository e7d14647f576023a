"""The registry of combinations: every method the library offers, declared once where it is defined.

A method's module decorates its factory with :func:`register`; the public
surface, the trainer's ``--optimizer`` names, the test harness and the API
reference all read :data:`METHODS`, and a test fails when one of them misses a
registered method.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal, Optional, TypeVar

Factory = TypeVar('Factory', bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Method:
  """A combination of per-exit gradients and what it promises.

  Attributes:
    name: the public factory's name (``aj.<name>``).
    factory: ``factory(**hyperparameters) -> optax.GradientTransformationExtraArgs``.
    family: the kind of method: ``'orthogonalization'`` (OSGD), ``'summed'``,
      ``'projection'`` (PCGrad, GradVac), ``'min_norm'`` (MGDA, UPGrad,
      DualProj, CAGrad), ``'balance'`` (IMTL-G, Aligned-MTL, Nash-MTL, ConFIG,
      FairGrad) or ``'loss_weighting'``: one private module each.
    needs_num_exits: its state is sized by K, so ``num_exits=`` is required.
    descent: whose loss its direction does not increase to first order: ``'all'``
      exits whenever such a direction exists, the ``'first'`` exit, or None.
    ordered: its direction depends on the order of the exits.
    reads_losses: it reads the exits' losses (``update(..., losses=[K])``).
    granular: it takes ``granularity`` (its weights differ between groups of leaves).
  """
  name: str
  factory: Callable[..., Any]
  family: str
  needs_num_exits: bool = False
  descent: Optional[Literal['all', 'first']] = None
  ordered: bool = False
  reads_losses: bool = False
  granular: bool = True


_METHODS: dict[str, Method] = {}
METHODS: Mapping[str, Method] = MappingProxyType(_METHODS)
"""Every registered method by name, in registration order (read-only)."""


def register(*, family: str, needs_num_exits: bool = False,
             descent: Optional[Literal['all', 'first']] = None, ordered: bool = False,
             reads_losses: bool = False, granular: bool = True) -> Callable[[Factory], Factory]:
  """Decorator for a method's factory: records it in :data:`METHODS`, returns it unchanged."""
  def add(factory: Factory) -> Factory:
    name = factory.__name__
    if name in _METHODS:
      raise ValueError(f'a method named {name!r} is registered twice; give the factory a new name')
    _METHODS[name] = Method(name, factory, family, needs_num_exits, descent, ordered,
                            reads_losses, granular)
    return factory
  return add
