"""Gram weightings: every multi-task aggregation that is a function of the Gram matrix.

Most aggregations of per-task (here: per-exit) gradients ``g_1..g_K`` return a
linear combination ``sum_k w_k g_k`` whose weights depend only on the inner
products ``G = J J^T`` (the ``[K, K]`` Gram matrix). :func:`gram_weighting`
turns such a weighting into an optax transformation with the contract of
:func:`anytime_jax.orthogonalize`: per-exit gradients in (every leaf
``[K, *param.shape]``), ordinary gradients out, any granularity, jittable,
dtype kept. The full Jacobian is never flattened: one ``[K, K]`` contraction
per leaf, the weighting on device, one weighted sum per leaf.

The methods below are written on it; each cites its paper. Inner solvers run
on device with a fixed iteration count, so every method stays inside ``jit``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from anytime_jax import gram as gram_lib


def gram_weighting(
    weighting: Callable[..., Any],
    *,
    granularity: gram_lib.Granularity = 'global',
    init_state: Optional[Callable[[int], Any]] = None,
    axis_name: Any = None,
) -> optax.GradientTransformationExtraArgs:
  """An optax transformation summing exit gradients with Gram-derived weights.

  Args:
    weighting: without ``init_state``, ``weighting(gram [K, K]) -> [K]``,
      applied to every group's Gram matrix (float32). With ``init_state``,
      ``weighting(grams [G, K, K], state, **extra_args) -> (weights [G, K],
      state)``, called once per update with every group's Gram matrix and the
      update's extra keyword arguments (e.g. ``losses=``).
    granularity: ``'global'`` (default: one Gram matrix over the whole
      parameter vector, as the methods' papers do), ``'leaf'`` (one per
      parameter tensor), or a partition (see :func:`anytime_jax.orthogonalize`).
    init_state: ``init_state(num_groups) -> state`` for stateful weightings.
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name:
      the per-exit gradients are averaged over it before the Gram matrix.
      Not needed under ``jit`` with a sharded batch, where the per-exit
      gradients of the global-batch losses are already the averaged ones.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` that takes per-exit gradients
    and returns ``sum_k w_k g_k`` per group, each leaf in its input dtype.

  Example: a weighting that gives each exit the inverse of its gradient's norm::

    tx = aj.gram_weighting(lambda g: jax.lax.rsqrt(jnp.diagonal(g) + 1e-12))
  """
  def init_fn(params):
    if init_state is None:
      return optax.EmptyState()
    if params is None and granularity != 'global':
      raise ValueError('this stateful weighting keeps a state per group: pass the parameters '
                       'to init (tx.init(params)) or use granularity="global".')
    num_groups = 1 if granularity == 'global' else gram_lib.group_ids(params, granularity)[1]
    return init_state(num_groups)

  def update_fn(updates, state, params=None, **extra_args):
    updates = gram_lib.average_over(updates, axis_name)
    _, ids, grams = gram_lib.exit_grams(updates, params, granularity)
    if init_state is None:
      weights = jax.vmap(weighting)(grams)
    else:
      weights, state = weighting(grams, state, **extra_args)
    return gram_lib.combine(updates, weights.astype(jnp.float32), ids), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# ----- solvers shared by the methods -----

def _normalized(gram: jax.Array) -> jax.Array:
  """``G / trace(G)``: eigenvalues in [0, 1]; every weighting below is scale-free."""
  return gram / jnp.maximum(jnp.trace(gram), jnp.finfo(gram.dtype).tiny)


def _fista(grad_fn: Callable, project: Callable, start: jax.Array, step: float,
           iterations: int) -> jax.Array:
  """Accelerated projected gradient (Beck & Teboulle 2009) with a fixed step and count."""
  def body(_, carry):
    x, y, t = carry
    x_next = project(y - step * grad_fn(y))
    t_next = (1 + jnp.sqrt(1 + 4 * t ** 2)) / 2
    return x_next, x_next + (t - 1) / t_next * (x_next - x), t_next
  return jax.lax.fori_loop(0, iterations, body, (start, start, jnp.ones((), start.dtype)))[0]


def box_qp(gram: jax.Array, lower: jax.Array, iterations: int = 500) -> jax.Array:
  """``argmin_{v >= lower} v^T G v``, by accelerated projected gradient.

  The dual of projecting ``J^T lower`` onto the dual cone of the rows of ``J``
  ``{x : J x >= 0}``: the projection is ``J^T v`` (Quinton & Rey 2024, Prop. 1).
  """
  g = _normalized(gram)  # gradient 2 g v has Lipschitz constant <= 2
  return _fista(lambda v: 2 * g @ v, lambda v: jnp.maximum(v, lower), lower, 0.5, iterations)


def project_to_simplex(v: jax.Array) -> jax.Array:
  """Euclidean projection of ``v`` ``[K]`` onto the probability simplex (sort-based)."""
  u = jnp.sort(v)[::-1]
  cumulative = jnp.cumsum(u) - 1.0
  index = jnp.arange(1, v.shape[-1] + 1, dtype=v.dtype)
  rho = jnp.sum(u - cumulative / index > 0)
  theta = cumulative[rho - 1] / rho.astype(v.dtype)
  return jnp.maximum(v - theta, 0.0)


def min_norm_weights(gram: jax.Array, iterations: int = 200) -> jax.Array:
  """The point of the simplex minimizing ``a^T G a`` (MGDA), by accelerated projected gradient."""
  num_exits = gram.shape[-1]
  g = _normalized(gram)
  start = jnp.full(num_exits, 1.0 / num_exits, gram.dtype)
  return _fista(lambda a: 2 * g @ a, project_to_simplex, start, 0.5, iterations)


# ----- the methods -----

def upgrad(*, iterations: int = 500, granularity: gram_lib.Granularity = 'global',
           axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """UPGrad (Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization*, 2024).

  Each exit gradient is projected onto the dual cone of all exit gradients
  (the directions that increase no exit's loss), and the projections are
  averaged: weights ``(1/K) sum_i argmin_{v >= e_i} v^T G v``
  (:func:`box_qp`, ``iterations`` steps of accelerated projected gradient).
  """
  def weights(gram):
    eye = jnp.eye(gram.shape[-1], dtype=gram.dtype)
    return jnp.mean(jax.vmap(lambda e: box_qp(gram, e, iterations))(eye), axis=0)
  return gram_weighting(weights, granularity=granularity, axis_name=axis_name)


def dualproj(*, iterations: int = 500, granularity: gram_lib.Granularity = 'global',
             axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """DualProj (Quinton & Rey 2024): the mean gradient projected onto the dual cone.

  Weights ``argmin_{v >= 1/K} v^T G v`` (:func:`box_qp`): the closest
  direction to the mean gradient that increases no exit's loss.
  """
  def weights(gram):
    k = gram.shape[-1]
    return box_qp(gram, jnp.full(k, 1.0 / k, gram.dtype), iterations)
  return gram_weighting(weights, granularity=granularity, axis_name=axis_name)


def cagrad_weights(gram: jax.Array, c: float = 0.5, iterations: int = 2000,
                   smoothing: float = 1e-6) -> jax.Array:
  """CAGrad's weights: ``1/K + lambda w``, then divided by ``1 + c^2``.

  ``w`` minimizes ``w^T G g0 + c |g0| |G w|`` over the simplex (``g0`` the
  mean gradient), by accelerated projected gradient on the trace-normalized
  Gram matrix with the norm smoothed as ``sqrt(q + smoothing)``;
  ``lambda = c |g0| / |g_w|``.
  """
  k = gram.shape[-1]
  g = _normalized(gram)
  mean = jnp.full(k, 1.0 / k, gram.dtype)
  radius = c * jnp.sqrt(jnp.maximum(mean @ g @ mean, 0.0))
  linear = g @ mean

  def grad_fn(w):
    return linear + radius * (g @ w) / jnp.sqrt(w @ g @ w + smoothing)

  step = 1.0 / (1.0 + radius / jnp.sqrt(smoothing))  # the smoothed objective's curvature bound
  w = _fista(grad_fn, project_to_simplex, mean, step, iterations)
  norm_w = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
  lam = jnp.where(norm_w > 0, radius / jnp.where(norm_w > 0, norm_w, 1.0), 0.0)
  return (mean + lam * w) / (1 + c ** 2)


def cagrad(c: float = 0.5, *, iterations: int = 2000, granularity: gram_lib.Granularity = 'global',
           axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """CAGrad (Liu, Liu, Jin, Stone, Liu, *Conflict-Averse Gradient Descent for Multi-task
  Learning*, NeurIPS 2021).

  The direction maximizes the worst exit's improvement within a ball of
  radius ``c |g0|`` around the mean gradient ``g0``; rescaled by ``1/(1+c^2)``
  as in the authors' code (``rescale=1``). See :func:`cagrad_weights`.
  """
  return gram_weighting(lambda g: cagrad_weights(g, c, iterations), granularity=granularity,
                        axis_name=axis_name)


def _pinv_psd(gram: jax.Array, rtol: float = 1e-6) -> jax.Array:
  """Pseudo-inverse of a symmetric PSD matrix, eigenvalues below ``rtol * max`` dropped."""
  values, vectors = jnp.linalg.eigh(gram)
  keep = values > rtol * jnp.max(values)
  inverse = jnp.where(keep, 1.0 / jnp.where(keep, values, 1.0), 0.0)
  return (vectors * inverse) @ vectors.T


def imtl_g_weights(gram: jax.Array) -> jax.Array:
  """IMTL-G's weights: ``a = G^+ n / (1^T G^+ n)`` with ``n_k = |g_k|``.

  Then ``d = J^T a`` has the same projection on every exit's unit gradient
  (``(G a)_k / n_k`` equal for all k) and ``sum_k a_k = 1``.
  """
  v = _pinv_psd(gram) @ jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  total = jnp.sum(v)
  return jnp.where(jnp.abs(total) > 1e-12, v / jnp.where(total == 0, 1.0, total), 0.0)


def imtl_g(*, granularity: gram_lib.Granularity = 'global',
           axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """IMTL-G (Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, *Towards Impartial Multi-task
  Learning*, ICLR 2021): the combination whose projection on every exit's unit
  gradient is the same (closed form, :func:`imtl_g_weights`)."""
  return gram_weighting(imtl_g_weights, granularity=granularity, axis_name=axis_name)


def aligned_mtl_weights(gram: jax.Array, rtol: float = 1e-6) -> jax.Array:
  """Aligned-MTL's weights: ``B 1/K`` with ``B = sqrt(l_min) V L^-1/2 V^T`` on ``G``'s range.

  The aligned gradients ``B J`` are orthogonal with equal norms (their Gram
  matrix is ``l_min`` times the projector on ``G``'s range); ``l_min`` is the
  smallest eigenvalue above ``rtol`` times the largest.
  """
  values, vectors = jnp.linalg.eigh(gram)
  keep = values > rtol * jnp.max(values)
  smallest = jnp.min(jnp.where(keep, values, jnp.inf))
  scale = jnp.where(keep, jnp.sqrt(smallest / jnp.where(keep, values, 1.0)), 0.0)
  balance = (vectors * scale) @ vectors.T
  k = gram.shape[-1]
  return jnp.where(jnp.isfinite(smallest), balance @ jnp.full(k, 1.0 / k, gram.dtype), 0.0)


def aligned_mtl(*, granularity: gram_lib.Granularity = 'global',
                axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """Aligned-MTL (Senushkin, Patakin, Kuznetsov, Konushin, *Independent Component Alignment
  for Multi-Task Learning*, CVPR 2023): the exit gradients are replaced by the
  closest orthogonal, equal-norm system (condition number 1) and averaged
  (:func:`aligned_mtl_weights`)."""
  return gram_weighting(aligned_mtl_weights, granularity=granularity, axis_name=axis_name)


def nash_mtl_weights(gram: jax.Array, iterations: int = 50, ridge: float = 1e-6) -> jax.Array:
  """Nash-MTL's weights: ``a > 0`` with ``a_k (G a)_k = 1`` for every k.

  ``G`` is normalized by its Frobenius norm (as in the authors' code) and given
  a ridge ``ridge * I`` so that a solution exists for rank-deficient
  gradients. The solution minimizes ``a^T G a / 2 - sum_k log a_k``, a
  self-concordant function: ``iterations`` damped Newton steps
  (step ``1 / (1 + decrement)``), which stay positive and converge
  quadratically once close.
  """
  k = gram.shape[-1]
  g = gram / jnp.maximum(jnp.linalg.norm(gram), jnp.finfo(gram.dtype).tiny)
  g = g + ridge * jnp.eye(k, dtype=g.dtype)

  def newton(_, a):
    grad = g @ a - 1.0 / a
    hessian = g + jnp.diag(1.0 / a ** 2)
    direction = jnp.linalg.solve(hessian, grad)
    decrement = jnp.sqrt(jnp.maximum(grad @ direction, 0.0))
    return a - direction / (1.0 + decrement)

  start = 1.0 / jnp.sqrt(jnp.diagonal(g))
  return jax.lax.fori_loop(0, iterations, newton, start)


def nash_mtl(*, iterations: int = 50, granularity: gram_lib.Granularity = 'global',
             axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, *Multi-Task
  Learning as a Bargaining Game*, ICML 2022): the Nash bargaining solution
  ``G a = 1 / a`` (:func:`nash_mtl_weights`), solved exactly each step
  (the authors' sequential convex approximation, update interval and
  gradient-norm cap are not reproduced)."""
  return gram_weighting(lambda g: nash_mtl_weights(g, iterations), granularity=granularity,
                        axis_name=axis_name)


class GradVacState(NamedTuple):
  key: jax.Array
  target: jax.Array  # [G, K, K] running targets of the pairwise cosines


def gradvac_coefficients(gram: jax.Array, target: jax.Array, order: jax.Array, beta: float
                         ) -> tuple[jax.Array, jax.Array]:
  """GradVac in coefficient space: ``([K, K] rows = modified g_i over the g_j, new targets)``.

  For each exit i and each other exit j in ``order``: with ``phi`` the cosine
  between the current g_i and the original g_j and ``t`` its target, if
  ``phi < t`` then ``g_i += |g_i| (t sqrt(1-phi^2) - phi sqrt(1-t^2)) /
  (|g_j| sqrt(1-t^2)) g_j``; the target moves to ``(1-beta) t + beta phi``.
  """
  k = gram.shape[-1]
  tiny = jnp.finfo(gram.dtype).tiny
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))

  def row(i, target_i):
    def step(carry, j):
      c, t_row = carry
      e_j = jax.nn.one_hot(j, k, dtype=gram.dtype)
      norm_i = jnp.sqrt(jnp.maximum(c @ gram @ c, 0.0))
      denominator = norm_i * norms[j]
      phi = jnp.where(denominator > tiny, (c @ gram @ e_j) / jnp.maximum(denominator, tiny), 0.0)
      t = t_row[j]
      root_t = jnp.sqrt(jnp.maximum(1 - t ** 2, tiny))
      add = norm_i * (t * jnp.sqrt(jnp.maximum(1 - phi ** 2, 0.0)) - phi * root_t) / (
          jnp.maximum(norms[j], tiny) * root_t)
      apply = (j != i) & (phi < t) & (denominator > tiny)
      c = c + jnp.where(apply, add, 0.0) * e_j
      t_row = jnp.where(j != i, t_row.at[j].set((1 - beta) * t + beta * phi), t_row)
      return (c, t_row), None
    (c, t_row), _ = jax.lax.scan(step, (jax.nn.one_hot(i, k, dtype=gram.dtype), target_i), order)
    return c, t_row

  return jax.vmap(row)(jnp.arange(k), target)


def gradvac(num_exits: int, *, beta: float = 0.01, seed: int = 0, granularity: gram_lib.Granularity = 'global',
            axis_name: Any = None) -> optax.GradientTransformationExtraArgs:
  """GradVac (Wang, Tsvetkov, Firat, Cao, *Gradient Vaccine: Investigating and Improving
  Multi-task Optimization in Massively Multilingual Models*, ICLR 2021).

  Like PCGrad, but every pair of exits is pulled towards a target cosine (a
  running average of the pair's observed cosines, rate ``beta``) rather than
  only to orthogonality when they conflict; the other exits are visited in a
  random order drawn anew each step. Stateful: with a granularity other than
  ``'global'``, pass the parameters to ``init``.

  Args:
    num_exits: K, to size the state.
    beta: the targets' averaging rate.
    seed: seed of the per-step orders.
    granularity: as in :func:`gram_weighting`; each group keeps its own targets.
  """
  def weighting(grams, state, **_):
    key, use = jax.random.split(state.key)
    order = jax.random.permutation(use, num_exits)
    coeffs, targets = jax.vmap(lambda g, t: gradvac_coefficients(g, t, order, beta))(
        grams, state.target)
    return jnp.sum(coeffs, axis=1), GradVacState(key, targets)

  return gram_weighting(
      weighting, granularity=granularity, axis_name=axis_name,
      init_state=lambda groups: GradVacState(
          jax.random.key(seed), jnp.zeros((groups, num_exits, num_exits), jnp.float32)))
