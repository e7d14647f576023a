"""Methods that balance the exits' gradients in closed form or by Newton steps:
IMTL-G, Aligned-MTL, Nash-MTL, ConFIG and FairGrad.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Literal, Optional, Union

import jax
import jax.numpy as jnp
import optax

from anytime_jax._src.combination import Solution, solution, gram_weighting
from anytime_jax._src.gram import Granularity
from anytime_jax._src import solvers
from anytime_jax._src.registry import register

def _pinv_psd(gram: jax.Array, rtol: float = 1e-6) -> jax.Array:
  """Pseudo-inverse of a symmetric PSD matrix, eigenvalues below ``rtol * max`` dropped."""
  values, vectors = jnp.linalg.eigh(gram)
  keep = values > rtol * jnp.max(values)
  inverse = jnp.where(keep, 1.0 / jnp.where(keep, values, 1.0), 0.0)
  return (vectors * inverse) @ vectors.T


def imtl_g_weights(gram: jax.Array) -> Solution:
  """IMTL-G's weights ``a = G^+ n / |1^T G^+ n|`` (``n_k = |g_k|``), or MGDA's as a fallback.

  With these weights ``d = J^T a`` has the same, positive projection on every exit's unit
  gradient (``(G a)_k / n_k`` equal for all k) when ``n`` lies in ``G``'s
  range. Computed as ``D^-1 C^+ 1`` with ``C = D^-1 G D^-1`` (``D = diag n``;
  the same when ``G`` is invertible), so that gradients of very different
  norms are resolved. The paper normalizes by ``1^T G^+ n`` so that the
  weights sum to 1; for ill-conditioned ``G`` that sum can be negative, which
  would turn the direction uphill for every exit: we divide by its absolute
  value. Where the closed form still leaves an exit without improvement
  (rank-deficient ``G`` with ``n`` outside its range), the weights are
  MGDA's (:func:`min_norm_weights`), which improve every exit whenever some
  direction does, with ``fallback`` set. The residual is the spread of the
  projections, ``(max - min) / max``, of the direction returned.

  Args:
    gram: ``[K, K]`` Gram matrix ``G[i, j] = <g_i, g_j>``; exits with a zero
      gradient (zero diagonal) get weight 0.

  Returns:
    A :class:`Solution` with the weights ``a`` ``[K]``, the spread of the
    projections as the residual, 0 iterations, and ``fallback`` set where the
    weights are MGDA's.

  References:
    * Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang. *Towards Impartial Multi-task
      Learning*. ICLR 2021. https://openreview.net/forum?id=IMPnRXEWpvr
    * Sener, Koltun. *Multi-Task Learning as Multi-Objective Optimization*. NeurIPS 2018.
      https://arxiv.org/abs/1810.04650 (the fallback)

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> gram = jnp.array([[1.0, -2.0, 0.0], [-2.0, 5.0, 2.0], [0.0, 2.0, 4.0]])  # rank 2
  >>> s = aj.solvers.imtl_g_weights(gram)  # rows [1, 0], [-2, 1], [0, 2]
  >>> np.asarray(gram @ s.weights).round(4), bool(s.fallback)  # every exit improves
  (array([0.3018, 0.5286, 2.2643], dtype=float32), False)
  """
  unit, norms = solvers.unit_gram(gram)
  reached = solvers.exits_reached(gram)
  v = jnp.where(reached, _pinv_psd(unit) @ reached.astype(gram.dtype) / norms, 0.0)
  total = jnp.abs(jnp.sum(v))
  a = jnp.where(total > 0, v / jnp.where(total > 0, total, 1.0), 0.0)
  def extremes(a):  # the largest and smallest projection (G a)_k / n_k over the reached exits
    projections = (gram @ a) / norms
    return (jnp.max(jnp.where(reached, projections, -jnp.inf)),
            jnp.min(jnp.where(reached, projections, jnp.inf)))

  fallback = jnp.any(reached) & ~(extremes(a)[1] > 0)
  a = jnp.where(fallback, solvers.min_norm_weights(gram).weights, a)
  top, bottom = extremes(a)
  spread = jnp.where(top > 0, (top - bottom) / jnp.where(top > 0, top, 1.0), 0.0)
  return solution(a, spread, 0, fallback)


@register(family='balance', descent='all')
def imtl_g(*, granularity: Granularity = 'exits', axis_name: Optional[Hashable] = None,
           diagnostics: bool = False, num_exits: Optional[int] = None
           ) -> optax.GradientTransformationExtraArgs:
  """IMTL-G: the combination with the same projection on every exit's unit gradient.

  The gradient-balance part of IMTL: the weights ``a``, in closed form, make
  ``d = sum_k a_k g_k`` project equally on every exit's unit gradient
  (:func:`imtl_g_weights`), normalized by the absolute value of the paper's
  sum so that the direction is never uphill for every exit, and MGDA's
  weights where the closed form leaves an exit without improvement
  (``fallback`` in the diagnostics). It improves every exit whenever some
  direction does. No hyperparameters.

  Args:
    granularity: how leaves are grouped, each group with its own Gram matrix and
      weights (:data:`anytime_jax.gram.Granularity`: ``'exits'``, ``'leaf'``,
      ``'global'`` or a partition), as in :func:`anytime_jax.gram_weighting`.
      Default ``'exits'`` (leaves reached by the same set of exits together).
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name: the
      per-exit gradients are averaged over it first, as in
      :func:`anytime_jax.gram_weighting`. Default ``None`` (no averaging; not
      needed under ``jit`` with a sharded batch).
    diagnostics: keep the last update's weights, gradient norms, cosines and
      solver residual in the state (:class:`anytime_jax.CombinationDiagnostics`,
      read with :func:`anytime_jax.find_diagnostics`); needs ``num_exits``.
      Default ``False``.
    num_exits: K, the number of exits, a positive int; needed for
      ``diagnostics``, checked against the updates when given. Default ``None``
      (K read from the updates).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params=None)``
    takes per-exit gradients, every leaf ``[K, *param.shape]``, and returns ``sum_k a_k g_k``
    per group, every leaf ``[*param.shape]`` in its input dtype, with the new state
    (``optax.EmptyState()``, inside a :class:`anytime_jax.DiagnosedState` with
    ``diagnostics=True``).

  References:
    * Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang. *Towards Impartial Multi-task
      Learning*. ICLR 2021. https://openreview.net/forum?id=IMPnRXEWpvr
    * Sener, Koltun. *Multi-Task Learning as Multi-Objective Optimization*. NeurIPS 2018.
      https://arxiv.org/abs/1810.04650 (the fallback)

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.imtl_g()
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # equal projections onto both exits' unit gradients
  array([0.1716, 0.4142], dtype=float32)
  """
  return gram_weighting(imtl_g_weights, granularity=granularity, axis_name=axis_name,
                        diagnostics=diagnostics, num_exits=num_exits)


def aligned_mtl_weights(gram: jax.Array, rtol: float = 1e-6,
                        scale: Literal['sum', 'mean'] = 'sum') -> jax.Array:
  """Aligned-MTL's weights: ``B 1`` (or ``B 1/K``) with ``B = sqrt(l_min) V L^-1/2 V^T``.

  The aligned gradients ``B J`` are orthogonal with equal norms (their Gram
  matrix is ``l_min`` times the projector on ``G``'s range); ``l_min`` is the
  smallest eigenvalue above ``rtol`` times the largest. ``scale='sum'`` sums
  the aligned gradients, as the authors' code does; ``'mean'`` averages them.

  Args:
    gram: ``[K, K]`` Gram matrix ``G = J J^T`` (``V`` and ``L`` its eigenvectors and
      eigenvalues).
    rtol: relative threshold, ``> 0``: eigenvalues at most ``rtol`` times the
      largest count as zero (directions the gradients do not span). Default
      ``1e-6``.
    scale: ``'sum'`` (weights ``B 1``, the aligned gradients summed) or
      ``'mean'`` (``B 1 / K``, averaged). Default ``'sum'``.

  Returns:
    ``[K]`` the weights; zeros when every eigenvalue is (relatively) zero.

  References:
    * Senushkin, Patakin, Kuznetsov, Konushin. *Independent Component Alignment for
      Multi-Task Learning*. CVPR 2023. https://arxiv.org/abs/2305.19000
  """
  values, vectors = jnp.linalg.eigh(gram)
  keep = values > rtol * jnp.max(values)
  smallest = jnp.min(jnp.where(keep, values, jnp.inf))
  factor = jnp.where(keep, jnp.sqrt(smallest / jnp.where(keep, values, 1.0)), 0.0)
  balance = (vectors * factor) @ vectors.T
  k = gram.shape[-1]
  ones = jnp.full(k, 1.0 if scale == 'sum' else 1.0 / k, gram.dtype)
  return jnp.where(jnp.isfinite(smallest), balance @ ones, 0.0)


@register(family='balance')
def aligned_mtl(*, scale: Literal['sum', 'mean'] = 'sum', granularity: Granularity = 'exits',
                axis_name: Optional[Hashable] = None, diagnostics: bool = False,
                num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """Aligned-MTL: the exit gradients made orthogonal with equal norms, then summed.

  The exit gradients are replaced by the closest orthogonal, equal-norm
  system (condition number 1) and summed (:func:`aligned_mtl_weights`;
  ``scale='mean'`` averages instead).

  Args:
    scale: ``'sum'`` sums the aligned gradients, as the authors' code does;
      ``'mean'`` averages them (``1/K`` of the sum); anything else raises
      ``ValueError``. Default ``'sum'``.
    granularity: how leaves are grouped, each group with its own Gram matrix and
      weights (:data:`anytime_jax.gram.Granularity`: ``'exits'``, ``'leaf'``,
      ``'global'`` or a partition), as in :func:`anytime_jax.gram_weighting`.
      Default ``'exits'`` (leaves reached by the same set of exits together).
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name: the
      per-exit gradients are averaged over it first, as in
      :func:`anytime_jax.gram_weighting`. Default ``None`` (no averaging; not
      needed under ``jit`` with a sharded batch).
    diagnostics: keep the last update's weights, gradient norms, cosines and
      solver residual in the state (:class:`anytime_jax.CombinationDiagnostics`,
      read with :func:`anytime_jax.find_diagnostics`); needs ``num_exits``.
      Default ``False``.
    num_exits: K, the number of exits, a positive int; needed for
      ``diagnostics``, checked against the updates when given. Default ``None``
      (K read from the updates).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params=None)``
    takes per-exit gradients, every leaf ``[K, *param.shape]``, and returns the sum (or mean) of
    the aligned gradients per group, every leaf ``[*param.shape]`` in its input dtype, with the
    new state (``optax.EmptyState()``, inside a :class:`anytime_jax.DiagnosedState` with
    ``diagnostics=True``).

  References:
    * Senushkin, Patakin, Kuznetsov, Konushin. *Independent Component Alignment for
      Multi-Task Learning*. CVPR 2023. https://arxiv.org/abs/2305.19000

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.aligned_mtl()
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # aligned: orthogonal, equal norms
  array([0.2764, 0.8292], dtype=float32)
  """
  if scale not in ('sum', 'mean'):
    raise ValueError(f"aligned_mtl(scale=...) must be 'sum' or 'mean', got {scale!r}.")
  return gram_weighting(lambda g: aligned_mtl_weights(g, scale=scale), granularity=granularity,
                        axis_name=axis_name, diagnostics=diagnostics, num_exits=num_exits)


def _newton(gram: jax.Array, curvature: Callable[[jax.Array], jax.Array],
            gradient: Callable[[jax.Array], jax.Array], residual: Callable[[jax.Array], jax.Array],
            start: jax.Array, tol: Union[float, jax.Array], max_iterations: int
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Damped Newton on ``w^T G w / 2 - sum_k h(w_k)`` over ``w > 0``, until ``residual <= tol``.

  ``gradient(w)`` is the potential's gradient and ``curvature(w)`` the
  diagonal ``-h''(w)`` of its Hessian ``G + diag(-h'')``. The Newton system is
  solved scaled by ``S = diag(curvature)^-1/2`` (``S G S + I``, whose diagonal
  is at least 1), so that weights of very different sizes are resolved. Steps
  are damped by ``1 / (1 + decrement)`` and stop at 90 % of the way to the
  boundary of the positive orthant. Returns ``(w, residual, iterations)``.
  """
  k = gram.shape[-1]

  def step(w):
    grad = gradient(w)
    scale = jax.lax.rsqrt(curvature(w))
    system = scale[:, None] * gram * scale[None, :] + jnp.eye(k, dtype=gram.dtype)
    direction = scale * jnp.linalg.solve(system, scale * grad)
    decrement = jnp.sqrt(jnp.maximum(grad @ direction, 0.0))
    limit = jnp.min(jnp.where(direction > 0, w / jnp.where(direction > 0, direction, 1.0),
                              jnp.inf))
    return w - jnp.minimum(1.0 / (1.0 + decrement), 0.9 * limit) * direction

  return solvers.iterate(step, residual, start, tol, max_iterations)


def nash_mtl_weights(gram: jax.Array, *, tol: float = 1e-5, max_iterations: int = 50,
                     ridge: float = 1e-6, max_weight: Optional[float] = None) -> Solution:
  """Nash-MTL's weights: ``a > 0`` with ``a_k (G a)_k = 1`` for every k.

  ``G`` is normalized by its Frobenius norm (as in the authors' code). The
  direction ``J^T a`` does not change when one exit's gradient is rescaled
  (its weight takes the inverse factor), so the equations are solved on the
  unit-diagonal ``C = D^-1 G D^-1`` (``D`` the gradients' norms) and mapped
  back, the same solution in exact arithmetic and one float32 resolves at any
  ratio of gradient norms. ``C`` gets a ridge ``ridge * I``, so that a
  solution exists for rank-deficient gradients; the ridge is thereby relative
  to each exit's own squared norm. The solution minimizes ``a^T C a / 2 -
  sum_k log a_k``, a self-concordant function: damped Newton steps
  (:func:`_newton`, step ``1 / (1 + decrement)``), which stay positive and
  converge quadratically once close, from ``a = 1``. Opposing exits drive the
  weights up (about 1000 for two exactly opposed gradients), where float32
  resolves the equation only to about 1e-2: the solver then stops at
  ``max_iterations`` and reports the residual. ``max_weight`` caps each weight.

  Args:
    gram: ``[K, K]`` Gram matrix ``G[i, j] = <g_i, g_j>``; exits with a zero
      gradient get weight 0.
    tol: tolerance, ``> 0``, on the residual ``max_k |a_k (C a)_k - 1|`` (ridge
      included). Default ``1e-5``.
    max_iterations: the safeguard on the Newton steps, a positive int. Default
      ``50``.
    ridge: added to the unit-diagonal ``C``'s diagonal, ``>= 0``. Default
      ``1e-6``.
    max_weight: caps each weight (after solving), positive. Default ``None``
      (no cap).

  Returns:
    A :class:`Solution` with the weights ``[K]``, the residual and the Newton
    steps used.

  References:
    * Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya. *Multi-Task Learning
      as a Bargaining Game*. ICML 2022. https://arxiv.org/abs/2202.01017
  """
  k = gram.shape[-1]
  tiny = jnp.finfo(gram.dtype).tiny
  unit, norms = solvers.unit_gram(gram)
  reached = solvers.exits_reached(gram)
  # An exit that does not reach the group gets the equation a^2 = 1, then weight 0.
  c = unit / jnp.maximum(jnp.linalg.norm(unit), tiny) + jnp.diag(jnp.where(reached, ridge, 1.0))
  a, residual, iterations = _newton(
      c, lambda a: 1.0 / a ** 2, lambda a: c @ a - 1.0 / a,
      lambda a: jnp.max(jnp.abs(a * (c @ a) - 1.0)), jnp.ones(k, gram.dtype), tol,
      max_iterations)
  # Back to G / |G|_F: a_G = D'^-1 a with D' = D sqrt(|C|_F / |G|_F).
  scale = jnp.sqrt(jnp.maximum(jnp.linalg.norm(gram), tiny) / jnp.maximum(jnp.linalg.norm(unit),
                                                                           tiny))
  a = jnp.where(reached, a / norms * scale, 0.0)
  return solution(a if max_weight is None else jnp.minimum(a, max_weight), residual, iterations)


@register(family='balance', descent='all')
def nash_mtl(*, max_weight: Optional[float] = None, tol: float = 1e-5, max_iterations: int = 50,
             granularity: Granularity = 'exits', axis_name: Optional[Hashable] = None,
             diagnostics: bool = False, num_exits: Optional[int] = None
             ) -> optax.GradientTransformationExtraArgs:
  """Nash-MTL: the Nash bargaining solution among the exits, ``G a = 1 / a``.

  The weights ``a > 0`` solve ``a_k (G a)_k = 1`` for every k
  (:func:`nash_mtl_weights`: damped Newton to ``tol``, at most
  ``max_iterations`` steps), solved each step, each weight capped at
  ``max_weight`` if given; ``G`` is normalized by its Frobenius norm, as in the
  authors' code. Each exit's improvement ``<g_k, d>`` is then proportional to
  ``1 / a_k > 0`` (up to the solver's ridge). The authors' sequential convex
  approximation, update interval and gradient-norm clipping are not
  reproduced: clip with ``optax.clip_by_global_norm`` after it, and refresh the
  weights only every few steps with :func:`anytime_jax.amortize`
  (``granularity='global'``).

  Args:
    max_weight: caps each weight after solving, positive (else
      ``ValueError``). Default ``None`` (no cap).
    tol: tolerance, ``> 0``, on :func:`nash_mtl_weights`' residual
      ``max_k |a_k (C a)_k - 1|``. Default ``1e-5``.
    max_iterations: the safeguard on the Newton steps, a positive int. Default
      ``50``.
    granularity: how leaves are grouped, each group with its own Gram matrix and
      weights (:data:`anytime_jax.gram.Granularity`: ``'exits'``, ``'leaf'``,
      ``'global'`` or a partition), as in :func:`anytime_jax.gram_weighting`.
      Default ``'exits'`` (leaves reached by the same set of exits together).
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name: the
      per-exit gradients are averaged over it first, as in
      :func:`anytime_jax.gram_weighting`. Default ``None`` (no averaging; not
      needed under ``jit`` with a sharded batch).
    diagnostics: keep the last update's weights, gradient norms, cosines and
      solver residual in the state (:class:`anytime_jax.CombinationDiagnostics`,
      read with :func:`anytime_jax.find_diagnostics`); needs ``num_exits``.
      Default ``False``.
    num_exits: K, the number of exits, a positive int; needed for
      ``diagnostics``, checked against the updates when given. Default ``None``
      (K read from the updates).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params=None)``
    takes per-exit gradients, every leaf ``[K, *param.shape]``, and returns ``sum_k a_k g_k``
    per group, every leaf ``[*param.shape]`` in its input dtype, with the new state
    (``optax.EmptyState()``, inside a :class:`anytime_jax.DiagnosedState` with
    ``diagnostics=True``).

  References:
    * Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya. *Multi-Task Learning
      as a Bargaining Game*. ICML 2022. https://arxiv.org/abs/2202.01017

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.nash_mtl()
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # the Nash bargaining weights
  array([0.8803, 2.1252], dtype=float32)
  """
  if max_weight is not None and not max_weight > 0:
    raise ValueError(f'nash_mtl(max_weight=...) must be positive, got {max_weight!r}.')
  return gram_weighting(
      lambda g: nash_mtl_weights(g, tol=tol, max_iterations=max_iterations, max_weight=max_weight),
      granularity=granularity, axis_name=axis_name, diagnostics=diagnostics, num_exits=num_exits)


def conflict_free_weights(gram: jax.Array) -> jax.Array:
  """ConFIG's weights: the direction ``d = (sum_k <g_k, u>) u``, ``u`` the unit vector of ``g_v``.

  ``g_v = U^T (U U^T)^+ 1`` is the least-norm vector whose projection on every
  exit's unit gradient ``u_k = g_k / |g_k|`` (the rows of ``U``) is 1; it is then
  rescaled to the summed gradients' total projection on it. In Gram terms
  ``g_v = sum_k c_k g_k`` with ``c = D^-1 (D^-1 G D^-1)^+ 1``, ``D = diag |g_k|``.
  Exits that do not reach the group get weight 0.

  Args:
    gram: ``[K, K]`` Gram matrix ``G[i, j] = <g_i, g_j>``.

  Returns:
    ``[K]`` the weights of ``d``; zeros when ``g_v`` is zero.

  References:
    * Liu, Chu, Thuerey. *ConFIG: Towards Conflict-free Training of Physics Informed
      Neural Networks*. ICLR 2025. https://arxiv.org/abs/2408.11104
  """
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  reached = norms > 0
  inverse = jnp.where(reached, 1.0 / jnp.where(reached, norms, 1.0), 0.0)
  unit_gram = gram * inverse[:, None] * inverse[None, :]
  c = inverse * (_pinv_psd(unit_gram) @ reached.astype(gram.dtype))
  squared = c @ gram @ c  # |g_v|^2
  length = jnp.sum(gram @ c)  # sum_k g_k . g_v
  ok = squared > jnp.finfo(gram.dtype).tiny
  return jnp.where(ok, c * length / jnp.where(ok, squared, 1.0), 0.0)


@register(family='balance', descent='all')
def conflict_free(*, granularity: Granularity = 'exits', axis_name: Optional[Hashable] = None,
                  diagnostics: bool = False, num_exits: Optional[int] = None
                  ) -> optax.GradientTransformationExtraArgs:
  """ConFIG: the direction with equal projections on every exit's unit gradient.

  The direction ``u`` whose projection on every exit's unit gradient is the
  same (the least-norm such vector, normalized), scaled by the exit gradients'
  total projection on it, ``d = (sum_k <g_k, u>) u``: ``d`` improves every exit
  whenever such a ``u`` exists and that total is positive
  (:func:`conflict_free_weights`; the paper's main method, without its momentum
  variant M-ConFIG). No hyperparameters.

  Args:
    granularity: how leaves are grouped, each group with its own Gram matrix and
      weights (:data:`anytime_jax.gram.Granularity`: ``'exits'``, ``'leaf'``,
      ``'global'`` or a partition), as in :func:`anytime_jax.gram_weighting`.
      Default ``'exits'`` (leaves reached by the same set of exits together).
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name: the
      per-exit gradients are averaged over it first, as in
      :func:`anytime_jax.gram_weighting`. Default ``None`` (no averaging; not
      needed under ``jit`` with a sharded batch).
    diagnostics: keep the last update's weights, gradient norms, cosines and
      solver residual in the state (:class:`anytime_jax.CombinationDiagnostics`,
      read with :func:`anytime_jax.find_diagnostics`); needs ``num_exits``.
      Default ``False``.
    num_exits: K, the number of exits, a positive int; needed for
      ``diagnostics``, checked against the updates when given. Default ``None``
      (K read from the updates).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params=None)``
    takes per-exit gradients, every leaf ``[K, *param.shape]``, and returns ``d`` per group,
    every leaf ``[*param.shape]`` in its input dtype, with the new state
    (``optax.EmptyState()``, inside a :class:`anytime_jax.DiagnosedState` with
    ``diagnostics=True``).

  References:
    * Liu, Chu, Thuerey. *ConFIG: Towards Conflict-free Training of Physics Informed
      Neural Networks*. ICLR 2025. https://arxiv.org/abs/2408.11104

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.conflict_free()
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # equal angles with both exits' gradients
  array([0.3536, 0.8536], dtype=float32)
  """
  return gram_weighting(conflict_free_weights, granularity=granularity, axis_name=axis_name,
                        diagnostics=diagnostics, num_exits=num_exits)


def fairgrad_weights(gram: jax.Array, alpha: Union[float, jax.Array] = 1.0, *,
                     tol: float = 1e-5, max_iterations: int = 100, ridge: float = 1e-6
                     ) -> Solution:
  """FairGrad's weights: ``w > 0`` with ``(G w)_k = w_k^(-1/alpha)`` for every k.

  As the authors' code, on the raw Gram matrix: the solution scales with the
  gradients, as ``w(s G) = s^(-alpha/(1+alpha)) w(G)``, so it is solved on the
  trace-normalized ``G`` (plus ``ridge`` times its diagonal, so that a solution
  exists when some exits' gradients cancel; relative to each exit's own squared
  norm, so that it never outweighs a short gradient) and scaled back. Solved
  exactly, ``<g_k, d> = w_k^(-1/alpha) > 0``: the direction improves every
  exit. The equations are the stationarity
  conditions of the convex ``w^T G w / 2 - sum_k h(w_k)`` with ``h'(w) =
  w^(-1/alpha)``: damped Newton steps (:func:`_newton`) from the solution for
  the diagonal of ``G``, kept positive. Exits that do not reach the group get
  weight 0. ``alpha = 1`` is Nash-MTL's equation (on the unnormalized Gram
  matrix).

  Args:
    gram: ``[K, K]`` Gram matrix ``G[i, j] = <g_i, g_j>``.
    alpha: the fairness exponent, ``> 0``, a float or a scalar array. Default
      ``1.0``.
    tol: tolerance, ``> 0``, on the residual ``max_k |(G w)_k w_k^(1/alpha) -
      1|`` (ridge included). Default ``1e-5``.
    max_iterations: the safeguard on the Newton steps, a positive int. Default
      ``100``.
    ridge: ``G``'s diagonal times ``ridge`` is added to it, ``>= 0``. Default
      ``1e-6``.

  Returns:
    A :class:`Solution` with the weights ``[K]``, the residual and the Newton
    steps used.

  References:
    * Ban, Ji. *Fair Resource Allocation in Multi-Task Learning*. ICML 2024.
      https://arxiv.org/abs/2402.15638
  """
  reached = solvers.exits_reached(gram)
  scale = jnp.maximum(jnp.trace(gram), jnp.finfo(gram.dtype).tiny)
  # An unreached exit gets the equation w = w^(-1/alpha), solved by 1, then weight 0.
  g = gram / scale + jnp.diag(jnp.where(reached, ridge * jnp.diagonal(gram) / scale, 1.0))
  power = -1.0 / alpha
  start = jnp.diagonal(g) ** (-alpha / (1.0 + alpha))  # solves G_kk w_k = w_k^(-1/alpha)
  w, residual, iterations = _newton(
      g, lambda w: -power * w ** (power - 1.0), lambda w: g @ w - w ** power,
      lambda w: jnp.max(jnp.abs((g @ w) * w ** (-power) - 1.0)), start, tol, max_iterations)
  return solution(jnp.where(reached, w * scale ** (-alpha / (1.0 + alpha)), 0.0), residual,
                   iterations)


@register(family='balance', descent='all')
def fairgrad(*, alpha: float = 1.0, tol: float = 1e-5, max_iterations: int = 100,
             granularity: Granularity = 'exits', axis_name: Optional[Hashable] = None,
             diagnostics: bool = False, num_exits: Optional[int] = None
             ) -> optax.GradientTransformationExtraArgs:
  """FairGrad: alpha-fair exit weights, ``G w = w^(-1/alpha)``.

  The weights ``w > 0`` solve ``(G w)_k = w_k^(-1/alpha)`` for every k, so that
  exit k improves by ``<g_k, d> = w_k^(-1/alpha) > 0`` (:func:`fairgrad_weights`;
  the authors solve it with ``scipy.optimize.least_squares``, we by damped
  Newton on device, to ``tol``, at most ``max_iterations`` steps). Larger
  ``alpha`` favours the exits that gain least; ``alpha = 1`` is Nash-MTL's
  equation.

  Args:
    alpha: the fairness exponent, ``> 0`` (else ``ValueError``): 1 is
      proportional fairness, larger values approach max-min fairness. Default
      ``1.0``.
    tol: tolerance, ``> 0``, on :func:`fairgrad_weights`' residual
      ``max_k |(G w)_k w_k^(1/alpha) - 1|``. Default ``1e-5``.
    max_iterations: the safeguard on the Newton steps, a positive int. Default
      ``100``.
    granularity: how leaves are grouped, each group with its own Gram matrix and
      weights (:data:`anytime_jax.gram.Granularity`: ``'exits'``, ``'leaf'``,
      ``'global'`` or a partition), as in :func:`anytime_jax.gram_weighting`.
      Default ``'exits'`` (leaves reached by the same set of exits together).
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name: the
      per-exit gradients are averaged over it first, as in
      :func:`anytime_jax.gram_weighting`. Default ``None`` (no averaging; not
      needed under ``jit`` with a sharded batch).
    diagnostics: keep the last update's weights, gradient norms, cosines and
      solver residual in the state (:class:`anytime_jax.CombinationDiagnostics`,
      read with :func:`anytime_jax.find_diagnostics`); needs ``num_exits``.
      Default ``False``.
    num_exits: K, the number of exits, a positive int; needed for
      ``diagnostics``, checked against the updates when given. Default ``None``
      (K read from the updates).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params=None)``
    takes per-exit gradients, every leaf ``[K, *param.shape]``, and returns ``sum_k w_k g_k``
    per group, every leaf ``[*param.shape]`` in its input dtype, with the new state
    (``optax.EmptyState()``, inside a :class:`anytime_jax.DiagnosedState` with
    ``diagnostics=True``).

  References:
    * Ban, Ji. *Fair Resource Allocation in Multi-Task Learning*. ICML 2024.
      https://arxiv.org/abs/2402.15638

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.fairgrad(alpha=2.0)
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # weights 2.174, 1.496: (G w)_k = w_k^(-1/2)
  array([0.6782, 1.4958], dtype=float32)
  """
  if isinstance(alpha, (int, float)) and not alpha > 0:  # (an injected alpha is an array)
    raise ValueError(f'fairgrad(alpha=...) must be positive, got {alpha!r}.')
  return gram_weighting(
      lambda g: fairgrad_weights(g, alpha, tol=tol, max_iterations=max_iterations),
      granularity=granularity, axis_name=axis_name, diagnostics=diagnostics, num_exits=num_exits)
