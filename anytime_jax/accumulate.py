"""Gradient accumulation for per-exit combinations: sum raw per-exit gradients, combine once.

Gram-Schmidt (and every non-linear combination) does not commute with
averaging, so ``optax.MultiSteps`` around ``orthogonalize`` would average
combined directions of small batches. :func:`accumulate_exits` accumulates the
per-exit gradients themselves and calls the inner chain once every ``every``
micro-batches, on their mean: the same step as one batch ``every`` times larger.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class AccumulateExitsState(NamedTuple):
  mini_step: jax.Array  # micro-batches accumulated since the last combined step
  total: Any  # their per-exit gradients summed, leaves [K, *param.shape]
  inner: Any  # the inner transformation's state


def accumulate_exits(inner: optax.GradientTransformation, every: int, num_exits: int
                     ) -> optax.GradientTransformationExtraArgs:
  """Accumulates per-exit gradients over ``every`` micro-batches, then applies ``inner``.

  Args:
    inner: a chain that takes per-exit gradients, e.g. ``aj.osgd(0.1)``.
    every: micro-batches per step.
    num_exits: K, to size the accumulator.

  Returns:
    A transformation taking per-exit gradients (leaves ``[K, *param.shape]``)
    of one equally sized micro-batch per call: it returns zero updates on the
    first ``every - 1`` calls and ``inner``'s update of the micro-batches' mean
    per-exit gradients on the last (extra arguments such as ``losses=`` are
    those of that last call). Under ``jit``; the inner state advances once per
    step.
  """
  if not isinstance(every, int) or every < 1:
    raise ValueError(f'every must be a positive integer, got {every!r}.')
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    zeros = jax.tree.map(lambda p: jnp.zeros((num_exits, *jnp.shape(p)), jnp.result_type(p)),
                         params)
    return AccumulateExitsState(jnp.zeros((), jnp.int32), zeros, inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    total = jax.tree.map(jnp.add, state.total, updates)

    def combine(_):
      mean = jax.tree.map(lambda t: t / every, total)
      out, inner_state = inner.update(mean, state.inner, params, **extra_args)
      return out, AccumulateExitsState(jnp.zeros((), jnp.int32),
                                       jax.tree.map(jnp.zeros_like, total), inner_state)

    def keep(_):
      out = jax.tree.map(lambda u: jnp.zeros(u.shape[1:], u.dtype), updates)
      return out, AccumulateExitsState(state.mini_step + 1, total, state.inner)

    return jax.lax.cond(state.mini_step + 1 == every, combine, keep, None)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
