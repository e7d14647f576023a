"""Baseline combinations of per-exit gradients, on the same contract as OSGD.

Each is an optax transformation that takes per-exit gradients (every leaf
``[K, *param.shape]``) and returns ordinary gradients, so it replaces
:func:`anytime_jax.orthogonalize` at the head of a chain. All but AdaLoss are
linear combinations whose weights come from the ``[K, K]`` Gram matrix
(:mod:`anytime_jax.gram`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from anytime_jax import gram as gram_lib


def _gram_weighting(weights_fn: Callable[..., jax.Array], granularity, *,
                    init_state: Callable[[], NamedTuple] = optax.EmptyState,
                    next_state: Optional[Callable] = None):
  """A transformation summing exit gradients with Gram-derived weights.

  ``weights_fn(gram [K, K], state) -> [K]`` runs once per group;
  ``next_state(state, **extra_args)`` advances the state once per update.
  """

  def init_fn(params):
    del params
    return init_state()

  def update_fn(updates, state, params=None, **extra_args):
    _, ids, grams = gram_lib.exit_grams(updates, params, granularity)
    weights = jax.vmap(lambda g: weights_fn(g, state))(grams)
    if next_state is not None:
      state = next_state(state, **extra_args)
    return gram_lib.combine(updates, weights, ids), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sum_exits() -> optax.GradientTransformationExtraArgs:
  """The plain sum of the exit gradients: SGD on the summed losses."""
  return _gram_weighting(lambda g, s: jnp.ones(g.shape[-1], g.dtype), 'global')


def mean_exits() -> optax.GradientTransformationExtraArgs:
  """The mean of the exit gradients: SGD on the averaged losses."""
  return _gram_weighting(lambda g, s: jnp.full(g.shape[-1], 1.0 / g.shape[-1], g.dtype),
                         'global')


class PCGradState(NamedTuple):
  key: jax.Array


def pcgrad_coefficients(gram: jax.Array, order: jax.Array) -> jax.Array:
  """PCGrad in coefficient space: ``[K, K]``, row i the projected g_i over the g_j.

  Each g_i is projected, in the given order of the other exits, onto the normal
  plane of every g_j it conflicts with (negative inner product).
  """
  num_exits = gram.shape[-1]
  tiny = jnp.finfo(gram.dtype).tiny

  def project_one(i):
    def step(c, j):
      e_j = jax.nn.one_hot(j, num_exits, dtype=gram.dtype)
      dot = c @ gram @ e_j
      conflict = (dot < 0) & (j != i) & (gram[j, j] > tiny)
      return c - jnp.where(conflict, dot / jnp.maximum(gram[j, j], tiny), 0.0) * e_j, None
    return jax.lax.scan(step, jax.nn.one_hot(i, num_exits, dtype=gram.dtype), order)[0]

  return jax.vmap(project_one)(jnp.arange(num_exits))


def pcgrad(seed: int = 0, granularity: gram_lib.Granularity = 'global'
           ) -> optax.GradientTransformationExtraArgs:
  """PCGrad (Yu et al., *Gradient Surgery for Multi-Task Learning*, NeurIPS 2020).

  Every exit's gradient is projected onto the normal plane of each other exit
  gradient it conflicts with, the others visited in a random order drawn anew
  each step; the projected gradients are summed.

  Args:
    seed: seed of the per-step random orders.
    granularity: as in :func:`anytime_jax.orthogonalize`; the paper uses the
      whole parameter vector (``'global'``).
  """
  def weights(gram, state):
    order = jax.random.permutation(state.key, gram.shape[-1])
    return jnp.sum(pcgrad_coefficients(gram, order), axis=0)

  return _gram_weighting(weights, granularity,
                         init_state=lambda: PCGradState(jax.random.key(seed)),
                         next_state=lambda s, **_: PCGradState(jax.random.split(s.key)[0]))


def project_to_simplex(v: jax.Array) -> jax.Array:
  """Euclidean projection of ``v`` ``[K]`` onto the probability simplex (sort-based)."""
  u = jnp.sort(v)[::-1]
  cumulative = jnp.cumsum(u) - 1.0
  index = jnp.arange(1, v.shape[-1] + 1, dtype=v.dtype)
  rho = jnp.sum(u - cumulative / index > 0)
  theta = cumulative[rho - 1] / rho.astype(v.dtype)
  return jnp.maximum(v - theta, 0.0)


def min_norm_weights(gram: jax.Array, iterations: int = 200) -> jax.Array:
  """The point of the simplex minimizing ``a^T G a``: accelerated projected gradient (FISTA)."""
  num_exits = gram.shape[-1]
  scale = jnp.maximum(jnp.trace(gram), jnp.finfo(gram.dtype).tiny)
  g = gram / scale  # eigenvalues now in [0, 1]: step 1/L with L = 2 works
  start = jnp.full(num_exits, 1.0 / num_exits, gram.dtype)

  def step(t, carry):
    a, y, momentum = carry
    a_next = project_to_simplex(y - (g @ y))
    momentum_next = (1 + jnp.sqrt(1 + 4 * momentum ** 2)) / 2
    y = a_next + (momentum - 1) / momentum_next * (a_next - a)
    return a_next, y, momentum_next

  return jax.lax.fori_loop(0, iterations, step, (start, start, jnp.ones((), gram.dtype)))[0]


def mgda(iterations: int = 200, granularity: gram_lib.Granularity = 'global'
         ) -> optax.GradientTransformationExtraArgs:
  """MGDA (Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS 2018).

  The direction is the min-norm point of the convex hull of the exit
  gradients, ``sum_k a_k g_k`` with ``a`` on the simplex, found by accelerated
  projected gradient on the Gram matrix (any K). Its norm is at most that of the smallest
  gradient, so MGDA wants a larger learning rate than the summed loss.
  """
  return _gram_weighting(lambda g, s: min_norm_weights(g, iterations), granularity)


class AdaLossState(NamedTuple):
  average: jax.Array  # [K] running average of each exit's loss
  count: jax.Array


def adaloss(num_exits: int, decay: float = 0.9, eps: float = 1e-8
            ) -> optax.GradientTransformationExtraArgs:
  """AdaLoss (Hu, Dey, Hebert, Bagnell, *Learning Anytime Predictions in Neural Networks
  via Adaptive Loss Balancing*, AAAI 2019).

  Exit k's gradient is weighted in inverse proportion to its running-average
  loss, so that every exit's relative improvement counts alike; the weights are
  normalized to sum to K (the summed loss's scale). Needs the per-exit losses:
  ``tx.update(jac, state, params, losses=losses)`` (``[K]``); the average uses
  the losses up to the previous step.
  """
  def weights(gram, state):
    inverse = 1.0 / (state.average + eps)
    w = jnp.where(state.count > 0, inverse / jnp.sum(inverse) * num_exits, 1.0)
    return w.astype(gram.dtype)

  def next_state(state, losses=None, **_):
    if losses is None or jnp.shape(losses) != (num_exits,):
      raise ValueError(f'adaloss needs the [{num_exits}] per-exit losses: call '
                       'tx.update(jac, state, params, losses=losses).')
    losses = jnp.asarray(losses, jnp.float32)
    average = jnp.where(state.count > 0, decay * state.average + (1 - decay) * losses, losses)
    return AdaLossState(average, state.count + 1)

  return _gram_weighting(weights, 'global',
                         init_state=lambda: AdaLossState(jnp.zeros(num_exits, jnp.float32),
                                                         jnp.zeros((), jnp.int32)),
                         next_state=next_state)
