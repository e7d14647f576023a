"""Combination weights refreshed every N steps: per-exit gradients at a fraction of their cost.

With ``'global'`` granularity a combination's update is ``sum_k w_k g_k``, the
gradient of the weighted loss ``sum_k w_k L_k``: once the K weights are known,
one ordinary backward pass gives it. :func:`amortize` wraps such a combination:
on refresh steps (every ``every``-th, the first included) it takes per-exit
gradients, runs the combination and keeps its weights ``w [K]`` in its state;
on the steps between it takes the gradient of ``sum_k w_k L_k`` and passes it
on. A training step reads :func:`find_amortized` ``(opt_state).refresh`` to
choose which gradient to compute, on the device (``jax.lax.cond``: both
programs compiled once, no host round trip); :func:`anytime_jax.make_train_step`
does it for you. A step costs about ``1 + (c - 1) / every`` times a summed-loss
step, ``c`` the cost of a per-exit step.

Between refreshes the update is exactly what the unamortized combination gives
with the cached weights, parameters that one exit alone reaches included: with
``'global'`` granularity exit k's head moves by ``w_k g_k``, so a negative
cached weight climbs exit k's loss on its head for up to ``every`` steps, where
the unamortized method would do so only on the steps whose own weight is
negative (see the sharp bits; measure with ``python -m experiments.drift``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from anytime_jax._src.combination import find_diagnostics, find_state


class AmortizedState(NamedTuple):
  """State of :func:`amortize`.

  Attributes:
    refresh: whether the next update must be given per-exit gradients
      (scalar bool).
    steps: updates so far (int32).
    weights: ``[K]`` the weights of the last refresh (float32).
    inner: the wrapped combination's state.
  """
  refresh: jax.Array
  steps: jax.Array
  weights: jax.Array
  inner: Any


def find_amortized(opt_state: Any) -> Optional[AmortizedState]:
  """The :class:`AmortizedState` inside an optimizer state (e.g. a chain's), or ``None``."""
  return find_state(opt_state, AmortizedState)


def _has_exit_axis(updates: Any, params: Any) -> bool:
  return any(jnp.ndim(u) == jnp.ndim(p) + 1
             for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params)))


def amortize(combination: optax.GradientTransformation, *, every: int, num_exits: int
             ) -> optax.GradientTransformationExtraArgs:
  """Refreshes a ``'global'`` combination's weights every ``every`` steps.

  On refresh steps (the first, then every ``every``-th) the combination runs on
  per-exit gradients and its ``[K]`` weights are kept; on the steps between,
  the gradient of ``sum_k w_k L_k`` with the kept weights (one ordinary
  backward pass) is passed on unchanged. A step costs about ``1 + (c - 1) /
  every`` times a summed-loss step, ``c`` the cost of a per-exit step. Nash-MTL's
  authors refresh their weights every few steps in the same way; FAMO
  updates loss-based weights and takes one weighted-loss gradient per step.

  Args:
    combination: a combination of per-exit gradients built with
      ``granularity='global'`` and ``diagnostics=True`` (its weights are read
      from its diagnostics), e.g. ``aj.orthogonalize(granularity='global',
      diagnostics=True, num_exits=K)``; required.
    every: N, the steps from one refresh to the next, a positive int (1: every
      step, the unamortized combination); required.
    num_exits: K, the number of exits, a positive int, to size the kept
      weights; required.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` that heads a chain: given
    per-exit gradients, every leaf ``[K, *param.shape]`` (when its state's
    ``refresh`` is set), it runs ``combination`` and keeps its weights; given
    ordinary gradients, every leaf ``[*param.shape]`` (of ``sum_k w_k L_k`` with
    ``w`` = :func:`find_amortized` ``(state).weights``), it passes them on.
    Either way it returns ``[*param.shape]`` updates and the new
    :class:`AmortizedState`. ``update`` needs ``params`` to tell the two apart.

  References:
    * Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya. *Multi-Task Learning
      as a Bargaining Game*. ICML 2022. https://arxiv.org/abs/2202.01017 (weights
      updated only every few steps)
    * Liu, Feng, Stone, Liu. *FAMO: Fast Adaptive Multitask Optimization*. NeurIPS 2023.
      https://arxiv.org/abs/2306.03792 (one weighted-loss gradient per step)

  Example:

  >>> import jax, jax.numpy as jnp, optax, anytime_jax as aj
  >>> tx = aj.amortize(aj.orthogonalize(granularity='global', diagnostics=True, num_exits=2),
  ...                  every=4, num_exits=2)
  >>> params = {'w': jnp.zeros(2)}
  >>> state = tx.init(params)
  >>> bool(aj.find_amortized(state).refresh)  # the first step refreshes
  True
  >>> jac = {'w': jnp.array([[1.0, 0.0], [1.0, 1.0]])}  # [K=2, *w.shape]
  >>> updates, state = tx.update(jac, state, params)
  >>> aj.find_amortized(state).weights  # OSGD's: u_1 + u_2 = 0 g_1 + 1 g_2
  Array([0., 1.], dtype=float32)
  >>> bool(aj.find_amortized(state).refresh)  # the next 3 steps take grad(sum_k w_k L_k)
  False
  """
  if not isinstance(every, int) or every < 1:
    raise ValueError(f'every must be a positive integer (steps between refreshes), got {every!r}.')

  def init_fn(params):
    inner = combination.init(params)
    if find_diagnostics(inner) is None:
      raise ValueError('amortize reads the combination\'s weights from its diagnostics: build it '
                       "with diagnostics=True, num_exits=K and granularity='global'.")
    return AmortizedState(jnp.ones((), bool), jnp.zeros((), jnp.int32),
                          jnp.ones((num_exits,), jnp.float32), inner)

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError('amortize needs params in update to tell per-exit gradients from the '
                       'weighted loss\'s gradient.')
    steps = state.steps + 1
    refresh = steps % every == 0
    if not _has_exit_axis(updates, params):
      return updates, state._replace(refresh=refresh, steps=steps)
    updates, inner = optax.with_extra_args_support(combination).update(updates, state.inner,
                                                                       params, **extra_args)
    weights = find_diagnostics(inner).weights
    if weights.shape != (1, num_exits):
      raise ValueError(f'amortize needs one weight per exit for the whole model (granularity='
                       f"'global'); the combination gave weights of shape {weights.shape}.")
    return updates, AmortizedState(refresh, steps, weights[0].astype(jnp.float32), inner)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
