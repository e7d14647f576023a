"""Summed and averaged exit gradients: the ordinary multi-exit baseline as a combination."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Optional

import jax.numpy as jnp
import optax

from anytime_jax._src import deprecation
from anytime_jax._src.combination import gram_weighting
from anytime_jax._src.gram import Granularity
from anytime_jax._src.registry import register


@register(family='summed', granular=False)
def sum_exits(*, axis_name: Optional[Hashable] = None, diagnostics: bool = False,
              num_exits: Optional[int] = None, granularity: Optional[Granularity] = None
              ) -> optax.GradientTransformationExtraArgs:
  """The plain sum of the exit gradients: SGD on the summed losses.

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> tx = aj.sum_exits()
  >>> out, _ = tx.update({'w': jnp.array([[1.0, 2.0], [3.0, -1.0]])}, tx.init(None))
  >>> out['w']
  Array([4., 1.], dtype=float32)
  """
  deprecation.ignored_granularity('sum_exits', granularity)
  return gram_weighting(lambda g: jnp.ones(g.shape[-1], g.dtype), granularity='exits',
                        axis_name=axis_name, diagnostics=diagnostics, num_exits=num_exits)


@register(family='summed', granular=False)
def mean_exits(*, axis_name: Optional[Hashable] = None, diagnostics: bool = False,
               num_exits: Optional[int] = None, granularity: Optional[Granularity] = None
               ) -> optax.GradientTransformationExtraArgs:
  """The mean of the exit gradients: SGD on the averaged losses.

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> tx = aj.mean_exits()
  >>> out, _ = tx.update({'w': jnp.array([[1.0, 2.0], [3.0, -1.0]])}, tx.init(None))
  >>> out['w']
  Array([2. , 0.5], dtype=float32)
  """
  deprecation.ignored_granularity('mean_exits', granularity)
  return gram_weighting(lambda g: jnp.full(g.shape[-1], 1.0 / g.shape[-1], g.dtype),
                        granularity='exits', axis_name=axis_name, diagnostics=diagnostics,
                        num_exits=num_exits)
