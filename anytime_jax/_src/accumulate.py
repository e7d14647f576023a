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

from anytime_jax._src import gram as gram_lib


class AccumulateExitsState(NamedTuple):
  """State of :func:`accumulate_exits`.

  Attributes:
    mini_step: micro-batches accumulated since the last combined step.
    total: their per-exit gradients summed, leaves ``[K, *param.shape]``.
    losses: their ``[K]`` per-exit losses summed (zeros if none were given).
    inner: the inner transformation's state.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]
  >>> tx = aj.accumulate_exits(aj.sum_exits(), every=2, num_exits=2)
  >>> _, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> int(state.mini_step), state.total['w'].shape
  (1, (2, 2))
  """
  mini_step: jax.Array
  total: Any
  losses: jax.Array
  inner: Any


def accumulate_exits(inner: optax.GradientTransformation, *, every: int, num_exits: int
                     ) -> optax.GradientTransformationExtraArgs:
  """Accumulates per-exit gradients over ``every`` micro-batches, then applies ``inner``.

  Gram-Schmidt and the other combinations are not linear, so they do not
  commute with averaging: the per-exit gradients (and losses) are summed over
  the micro-batches and ``inner`` sees their mean once, the same step as one
  batch ``every`` times larger. The accumulator holds one copy of the per-exit
  gradients, ``K`` times the parameters.

  Args:
    inner: an optax transformation (or chain) that takes per-exit gradients,
      e.g. ``aj.osgd(0.1)``; required.
    every: micro-batches per step, a positive int (1: every call steps);
      required.
    num_exits: K, the number of exits, a positive int, to size the
      accumulator; checked against the updates. Required.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` taking per-exit gradients
    (every leaf ``[K, *param.shape]``) of one equally sized micro-batch per
    call: it returns zero updates on the first ``every - 1`` calls and
    ``inner``'s update of the micro-batches' mean per-exit gradients on the
    last, with the new :class:`AccumulateExitsState`. ``losses=`` (``[K]``, for
    methods that read them, such as AdaLoss) is averaged over the
    micro-batches in the same way; other extra arguments are those of the last
    call. It runs under ``jit`` (a ``jax.lax.cond`` chooses); the inner state
    advances once per step.

  References:
    None: gradient accumulation is standard practice (``optax.MultiSteps`` for
    ordinary gradients); what is specific here follows from the combinations
    not commuting with averaging.

  Example: OSGD on batches four times larger than memory allows::

    tx = aj.accumulate_exits(aj.osgd(0.1), every=4, num_exits=K)

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.accumulate_exits(aj.osgd(0.1, momentum=None), every=2, num_exits=2)
  >>> params = {'w': jnp.zeros(2)}
  >>> state = tx.init(params)
  >>> updates, state = tx.update(jac, state, params)
  >>> updates['w']  # first micro-batch: no step yet
  Array([0., 0.], dtype=float32)
  >>> updates, state = tx.update(jac, state, params)
  >>> updates['w']  # OSGD on the average of the two
  Array([-0.1, -0.1], dtype=float32)
  """
  if not isinstance(every, int) or every < 1:
    raise ValueError(f'every must be a positive integer, got {every!r}.')
  if not isinstance(num_exits, int) or num_exits < 1:
    raise ValueError(f'num_exits must be a positive integer, got {num_exits!r}.')
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    zeros = jax.tree.map(lambda p: jnp.zeros((num_exits, *jnp.shape(p)), jnp.result_type(p)),
                         params)
    return AccumulateExitsState(jnp.zeros((), jnp.int32), zeros,
                                jnp.zeros(num_exits, jnp.float32), inner.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    k = gram_lib.check_exit_axis(updates, params)
    if k != num_exits:
      raise ValueError(f'accumulate_exits(num_exits={num_exits}) got per-exit gradients with '
                       f'K={k} exits; build it with num_exits={k}.')
    losses = extra_args.get('losses')
    if losses is not None and jnp.shape(losses) != (num_exits,):
      raise ValueError(f'accumulate_exits(num_exits={num_exits}) got losses= of shape '
                       f'{jnp.shape(losses)}; expected [{num_exits}].')
    total = jax.tree.map(jnp.add, state.total, updates)
    loss_total = state.losses + (0.0 if losses is None else jnp.asarray(losses, jnp.float32))

    def combine(_):
      # The inner chain sees the mean in the per-exit gradients' own dtype (float32 sums
      # underneath), as it would see one large batch's gradients.
      mean = jax.tree.map(lambda t, u: (t / every).astype(u.dtype), total, updates)
      args = dict(extra_args, losses=loss_total / every) if losses is not None else extra_args
      out, inner_state = inner.update(mean, state.inner, params, **args)
      return out, AccumulateExitsState(jnp.zeros((), jnp.int32),
                                       jax.tree.map(jnp.zeros_like, total),
                                       jnp.zeros_like(loss_total), inner_state)

    def keep(_):
      # Zeros shaped and typed like the inner chain's updates, whatever dtypes it returns.
      out = jax.tree.map(lambda u: jnp.zeros(u.shape, u.dtype), jax.eval_shape(combine, None)[0])
      return out, AccumulateExitsState(state.mini_step + 1, total, loss_total, state.inner)

    return jax.lax.cond(state.mini_step + 1 == every, combine, keep, None)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
