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
  """IMTL-G's weights: ``a = G^+ n / |1^T G^+ n|`` with ``n_k = |g_k|``, or MGDA's if that
  does not improve every exit.

  Then ``d = J^T a`` has the same, positive projection on every exit's unit
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

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> gram = jnp.array([[1.0, -2.0, 0.0], [-2.0, 5.0, 2.0], [0.0, 2.0, 4.0]])  # rank 2
  >>> s = aj.combinations.imtl_g_weights(gram)  # rows [1, 0], [-2, 1], [0, 2]
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
  """IMTL-G (Liu, Li, Kuang, Xue, Chen, Yang, Liao, Zhang, *Towards Impartial Multi-task
  Learning*, ICLR 2021): the combination whose projection on every exit's unit
  gradient is the same (closed form, :func:`imtl_g_weights`, sign-guarded).

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
  """Aligned-MTL (Senushkin, Patakin, Kuznetsov, Konushin, *Independent Component Alignment
  for Multi-Task Learning*, CVPR 2023): the exit gradients are replaced by the
  closest orthogonal, equal-norm system (condition number 1) and summed
  (:func:`aligned_mtl_weights`; ``scale='mean'`` averages instead).

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
    gram: ``[K, K]`` Gram matrix.
    tol: tolerance on the residual ``max_k |a_k (C a)_k - 1|`` (ridge included);
      default 1e-5.
    max_iterations: the safeguard on the Newton steps; default 50.
    ridge: added to the unit-diagonal ``C``'s diagonal; default 1e-6.
    max_weight: caps each weight (after solving), if given.

  Returns:
    A :class:`Solution` with the weights ``[K]``.
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
  """Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, *Multi-Task
  Learning as a Bargaining Game*, ICML 2022): the Nash bargaining solution
  ``G a = 1 / a`` (:func:`nash_mtl_weights`: Newton to ``tol``, default 1e-5,
  at most ``max_iterations``, default 50), solved each step, each weight
  capped at ``max_weight`` if given (the authors' sequential convex
  approximation, update interval and gradient-norm clipping are not
  reproduced; clip with ``optax.clip_by_global_norm`` after it).

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
  """ConFIG's weights: ``d = (sum_k g_k . u) u`` with ``u`` the unit vector of ``g_v``.

  ``g_v = U^T (U U^T)^+ 1`` is the least-norm vector whose projection on every
  exit's unit gradient ``u_k = g_k / |g_k|`` (the rows of ``U``) is 1; it is then
  rescaled to the summed gradients' total projection on it. In Gram terms
  ``g_v = sum_k c_k g_k`` with ``c = D^-1 (D^-1 G D^-1)^+ 1``, ``D = diag |g_k|``.
  Exits that do not reach the group get weight 0.
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
  """ConFIG (Liu, Chu, Thuerey, *ConFIG: Towards Conflict-free Training of Physics Informed
  Neural Networks*, ICLR 2025): the direction with the same positive projection on
  every exit's unit gradient, as long as the exits' gradients project on it in
  total (:func:`conflict_free_weights`; the paper's main method, without its momentum
  variant M-ConFIG).

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
    gram: ``[K, K]`` Gram matrix.
    alpha: the fairness exponent (positive).
    tol: tolerance on the residual ``max_k |(G w)_k w_k^(1/alpha) - 1|`` (ridge
      included); default 1e-5.
    max_iterations: the safeguard on the Newton steps; default 100.
    ridge: ``G``'s diagonal times ``ridge`` is added to it; default 1e-6.

  Returns:
    A :class:`Solution` with the weights ``[K]``.
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
  """FairGrad (Ban & Ji, *Fair Resource Allocation in Multi-Task Learning*, ICML 2024):
  alpha-fair weights, ``G w = w^(-1/alpha)`` (:func:`fairgrad_weights`; the
  authors solve it with ``scipy.optimize.least_squares``, we by damped Newton
  on device, to ``tol``, default 1e-5, at most ``max_iterations``, default
  100). Larger ``alpha`` favours the exits that gain least.

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
