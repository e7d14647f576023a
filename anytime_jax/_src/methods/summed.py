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

  Every exit gets weight 1, whatever the gradients: ``sum_k g_k``, the gradient of
  ``sum_k L_k``, the usual way of training a multi-exit network.

  Args:
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name: the
      per-exit gradients are averaged over it first, as in
      :func:`anytime_jax.gram_weighting`. Default ``None`` (no averaging; not
      needed under ``jit`` with a sharded batch).
    diagnostics: keep the last update's weights, gradient norms and cosines in
      the state (:class:`anytime_jax.CombinationDiagnostics`, read with
      :func:`anytime_jax.find_diagnostics`); needs ``num_exits``. Default
      ``False``.
    num_exits: K, the number of exits, a positive int; needed for
      ``diagnostics``, checked against the updates when given. Default ``None``
      (K read from the updates).
    granularity: deprecated and ignored: the weights are the same for every
      group of leaves. Anything but ``None`` warns (``DeprecationWarning``);
      the argument will be removed in anytime-jax 0.4. Default ``None``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state,
    params=None)`` takes per-exit gradients, every leaf ``[K, *param.shape]``,
    and returns ``sum_k g_k``, every leaf ``[*param.shape]`` in its input dtype,
    with the new state (``optax.EmptyState()``, or a
    :class:`anytime_jax.DiagnosedState` with ``diagnostics=True``).

  References:
    * Lee, Xie, Gallagher, Zhang, Tu. *Deeply-Supervised Nets*. AISTATS 2015.
      https://arxiv.org/abs/1409.5185 (a loss at every exit, trained together)
    * Wan, Hoffmann, Lu, Maire. *Orthogonalized SGD and Nested Architectures for Anytime
      Neural Networks*. ICML 2020. https://arxiv.org/abs/2008.06635 (the summed
      loss, the baseline OSGD is compared with)

  Example:

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

  Every exit gets weight ``1/K``: ``(1/K) sum_k g_k``, the gradient of
  ``(1/K) sum_k L_k``; the summed losses' direction at ``1/K`` of its length.

  Args:
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name: the
      per-exit gradients are averaged over it first, as in
      :func:`anytime_jax.gram_weighting`. Default ``None`` (no averaging; not
      needed under ``jit`` with a sharded batch).
    diagnostics: keep the last update's weights, gradient norms and cosines in
      the state (:class:`anytime_jax.CombinationDiagnostics`, read with
      :func:`anytime_jax.find_diagnostics`); needs ``num_exits``. Default
      ``False``.
    num_exits: K, the number of exits, a positive int; needed for
      ``diagnostics``, checked against the updates when given. Default ``None``
      (K read from the updates).
    granularity: deprecated and ignored: the weights are the same for every
      group of leaves. Anything but ``None`` warns (``DeprecationWarning``);
      the argument will be removed in anytime-jax 0.4. Default ``None``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state,
    params=None)`` takes per-exit gradients, every leaf ``[K, *param.shape]``,
    and returns ``(1/K) sum_k g_k``, every leaf ``[*param.shape]`` in its input dtype,
    with the new state (``optax.EmptyState()``, or a
    :class:`anytime_jax.DiagnosedState` with ``diagnostics=True``).

  References:
    * Lee, Xie, Gallagher, Zhang, Tu. *Deeply-Supervised Nets*. AISTATS 2015.
      https://arxiv.org/abs/1409.5185 (a loss at every exit, trained together)
    * Wan, Hoffmann, Lu, Maire. *Orthogonalized SGD and Nested Architectures for Anytime
      Neural Networks*. ICML 2020. https://arxiv.org/abs/2008.06635 (the summed
      loss, the baseline OSGD is compared with)

  Example:

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
