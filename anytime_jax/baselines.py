"""Baseline combinations of per-exit gradients, on the same contract as OSGD.

Each is an optax transformation that takes per-exit gradients (every leaf
``[K, *param.shape]``) and returns ordinary gradients, so it replaces
:func:`anytime_jax.orthogonalize` at the head of a chain. All but AdaLoss are
linear combinations whose weights come from the ``[K, K]`` Gram matrix
(:mod:`anytime_jax.gram`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from anytime_jax import gram as gram_lib
from anytime_jax.weightings import gram_weighting, min_norm_weights


def sum_exits(axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """The plain sum of the exit gradients: SGD on the summed losses."""
  return gram_weighting(lambda g: jnp.ones(g.shape[-1], g.dtype), axis_name=axis_name)


def mean_exits(axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """The mean of the exit gradients: SGD on the averaged losses."""
  return gram_weighting(lambda g: jnp.full(g.shape[-1], 1.0 / g.shape[-1], g.dtype),
                        axis_name=axis_name)


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


def pcgrad(seed: int = 0, granularity: gram_lib.Granularity = 'global',
           axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """PCGrad (Yu et al., *Gradient Surgery for Multi-Task Learning*, NeurIPS 2020).

  Every exit's gradient is projected onto the normal plane of each other exit
  gradient it conflicts with, the others visited in a random order drawn anew
  each step; the projected gradients are summed.

  Args:
    seed: seed of the per-step random orders.
    granularity: as in :func:`anytime_jax.orthogonalize`; the paper uses the
      whole parameter vector (``'global'``).
  """
  def weighting(grams, state, **_):
    key, use = jax.random.split(state.key)  # never draw from a key that is kept
    order = jax.random.permutation(use, grams.shape[-1])
    weights = jax.vmap(lambda g: jnp.sum(pcgrad_coefficients(g, order), axis=0))(grams)
    return weights, PCGradState(key)

  return gram_weighting(weighting, granularity=granularity, axis_name=axis_name,
                        init_state=lambda groups: PCGradState(jax.random.key(seed)))


def mgda(iterations: int = 200, granularity: gram_lib.Granularity = 'global',
         axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """MGDA (Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS 2018).

  The direction is the min-norm point of the convex hull of the exit
  gradients, ``sum_k a_k g_k`` with ``a`` on the simplex, found by accelerated
  projected gradient on the Gram matrix (any K). Its norm is at most that of the smallest
  gradient, so MGDA wants a larger learning rate than the summed loss.
  """
  return gram_weighting(lambda g: min_norm_weights(g, iterations), granularity=granularity,
                        axis_name=axis_name)


class AdaLossState(NamedTuple):
  average: jax.Array  # [K] running average of each exit's loss
  count: jax.Array


def adaloss(num_exits: int, decay: float = 0.9, eps: float = 1e-8,
            axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """AdaLoss (Hu, Dey, Hebert, Bagnell, *Learning Anytime Predictions in Neural Networks
  via Adaptive Loss Balancing*, AAAI 2019).

  Exit k's gradient is weighted in inverse proportion to its running-average
  loss, so that every exit's relative improvement counts alike; the weights are
  normalized to sum to K (the summed loss's scale). Needs the per-exit losses:
  ``tx.update(jac, state, params, losses=losses)`` (``[K]``); the average uses
  the losses up to the previous step.
  """
  def weighting(grams, state, losses=None, **_):
    if losses is None or jnp.shape(losses) != (num_exits,):
      raise ValueError(f'adaloss needs the [{num_exits}] per-exit losses: call '
                       'tx.update(jac, state, params, losses=losses).')
    inverse = 1.0 / (state.average + eps)
    w = jnp.where(state.count > 0, inverse / jnp.sum(inverse) * num_exits, 1.0)
    losses = jnp.asarray(losses, jnp.float32)
    average = jnp.where(state.count > 0, decay * state.average + (1 - decay) * losses, losses)
    return jnp.broadcast_to(w, grams.shape[:2]), AdaLossState(average, state.count + 1)

  return gram_weighting(weighting, axis_name=axis_name,
                        init_state=lambda groups: AdaLossState(jnp.zeros(num_exits, jnp.float32),
                                                               jnp.zeros((), jnp.int32)))
