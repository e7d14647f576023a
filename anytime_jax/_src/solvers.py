"""Solvers the methods share: box- and simplex-constrained QPs on a Gram matrix, on device.

Each stops on a tolerance of its own optimality condition, with a maximum
iteration count as a safeguard, and returns a
:class:`~anytime_jax.solvers.Solution` (weights, residual, iterations,
whether it fell back).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp

from anytime_jax._src.combination import Solution, solution

def normalized(gram: jax.Array) -> jax.Array:
  """``G / trace(G)``: eigenvalues in [0, 1]; every weighting below is scale-free."""
  return gram / jnp.maximum(jnp.trace(gram), jnp.finfo(gram.dtype).tiny)


def exits_reached(gram: jax.Array) -> jax.Array:
  """``[K]`` whether each exit's gradient is non-zero in this group."""
  return jnp.diagonal(gram) > 0


def unit_gram(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(C, n)`` with ``G = diag(n) C diag(n)``: C has a unit diagonal on the exits that reach
  the group (zero rows elsewhere), n the gradients' norms (1 where zero).

  Solving in C rather than G keeps float32 accurate when the gradients' norms differ by
  orders of magnitude (a norm ratio of 1e6 is 1e12 between G's eigenvalues).
  """
  reached = exits_reached(gram)
  norms = jnp.where(reached, jnp.sqrt(jnp.where(reached, jnp.diagonal(gram), 1.0)), 1.0)
  unit = gram / norms[:, None] / norms[None, :]
  return jnp.where(reached[:, None] & reached[None, :], unit, 0.0), norms


def iterate(step: Callable[[Any], Any], residual: Callable[[Any], jax.Array], start: Any,
             tol: Union[float, jax.Array], max_iterations: int) -> tuple[Any, jax.Array, jax.Array]:
  """``carry = step(carry)`` until ``residual(carry) <= tol`` or ``max_iterations`` steps.

  A ``jax.lax.while_loop``: jittable, not reverse-differentiable (nothing here needs
  gradients through the weights). A NaN residual stops at once, so non-finite input
  comes out non-finite rather than looping to the cap.

  Returns:
    ``(carry, residual, iterations)``.
  """
  def cond(state):
    _, r, i = state
    return (r > tol) & (i < max_iterations)

  def body(state):
    carry, _, i = state
    carry = step(carry)
    return carry, residual(carry), i + 1

  return jax.lax.while_loop(cond, body, (start, residual(start), jnp.zeros((), jnp.int32)))


def fista(grad_fn: Callable[[jax.Array], jax.Array], project: Callable[[jax.Array], jax.Array],
           start: jax.Array, step: Union[float, jax.Array],
           residual: Callable[[jax.Array], jax.Array], tol: Union[float, jax.Array],
           max_iterations: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Accelerated projected gradient (Beck & Teboulle 2009) with adaptive restart
  (O'Donoghue & Candes 2015), until ``residual(x) <= tol``; ``(x, residual, iterations)``."""
  def body(carry):
    x, y, t = carry
    x_next = project(y - step * grad_fn(y))
    restart = jnp.vdot(y - x_next, x_next - x) > 0  # momentum points uphill: drop it
    t = jnp.where(restart, 1.0, t)
    t_next = (1 + jnp.sqrt(1 + 4 * t ** 2)) / 2
    return x_next, x_next + (t - 1) / t_next * (x_next - x), t_next

  (x, _, _), r, i = iterate(body, lambda carry: residual(carry[0]),
                             (start, start, jnp.ones((), start.dtype)), tol, max_iterations)
  return x, r, i


def symmetric_solve(matrix: jax.Array, rhs: jax.Array, rtol: float = 1e-6) -> jax.Array:
  """Least-norm solution of a symmetric (possibly singular, indefinite) system, by eigh."""
  values, vectors = jnp.linalg.eigh(matrix)
  keep = jnp.abs(values) > rtol * jnp.max(jnp.abs(values))
  inverse = jnp.where(keep, 1.0 / jnp.where(keep, values, 1.0), 0.0)
  return (vectors * inverse) @ (vectors.T @ rhs)


EXACT_BOX_QP_MAX_EXITS = 8
"""Up to this many exits, :func:`box_qp` and :func:`min_norm_weights` are exact (every active
set, ``2 ** K`` small solves); beyond it they iterate to a tolerance."""


def qp_by_active_sets(unit: jax.Array, linear: jax.Array, lower: jax.Array,
                       allowed: jax.Array, total: Optional[tuple[jax.Array, jax.Array]] = None
                       ) -> jax.Array:
  """``argmin x^T C x / 2 + linear^T x`` over ``x >= lower`` (``x_k = lower_k`` where not
  ``allowed``), with ``m^T x = rho`` if ``total = (m, rho)``, exactly.

  For each of the ``2 ** K`` free sets F (the rest held at their bound) the
  minimizer on F solves a small KKT system; the optimum is the feasible one
  with the smallest objective (some free set of the optimum gives a
  non-singular system). ``C`` is a unit-diagonal Gram matrix (:func:`unit_gram`),
  so float32 resolves the systems whatever the gradients' norms.
  """
  k = unit.shape[-1]
  free_sets = ((jnp.arange(2 ** k)[:, None] >> jnp.arange(k)) & 1).astype(bool)
  dtype = unit.dtype

  def solve(free):
    free = free & allowed
    f = free.astype(dtype)
    held = jnp.where(free, 0.0, lower)
    system = unit * f[:, None] * f[None, :] + jnp.diag(1.0 - f)
    rhs = -(linear + unit @ held) * f
    if total is None:
      x = symmetric_solve(system, rhs) * f + held
      balanced = True
    else:
      m, rho = total
      border = jnp.concatenate([m * f, jnp.zeros(1, dtype)])
      system = jnp.concatenate([jnp.concatenate([system, (m * f)[None]]), border[:, None]], 1)
      x = symmetric_solve(system, jnp.concatenate([rhs, (rho - m @ held)[None]]))[:k] * f + held
      balanced = jnp.abs(m @ x - rho) <= 1e-4 * jnp.abs(rho) + 1e-30
    feasible = balanced & jnp.all(x >= lower - 1e-5 * (jnp.max(jnp.abs(x)) + jnp.abs(lower)))
    if total is not None:
      feasible = feasible & jnp.any(free)
    return x, jnp.where(feasible, x @ unit @ x / 2 + linear @ x, jnp.inf)

  candidates, objectives = jax.vmap(solve)(free_sets)
  return jnp.maximum(candidates[jnp.argmin(objectives)], lower)


def box_residual(unit: jax.Array, x: jax.Array, lower: jax.Array) -> jax.Array:
  """KKT residual of ``min x^T C x / 2, x >= lower``: the projected gradient step's length
  ``|x - max(x - C x, lower)|``, relative to ``|x|`` (both max-norms)."""
  step = x - jnp.maximum(x - unit @ x, lower)
  return jnp.max(jnp.abs(step)) / jnp.maximum(jnp.max(jnp.abs(x)), jnp.finfo(x.dtype).tiny)


def box_qp(gram: jax.Array, lower: jax.Array, *, tol: float = 1e-5,
           max_iterations: int = 2000) -> Solution:
  """``argmin_{v >= lower} v^T G v``.

  The dual of projecting ``J^T lower`` onto the dual cone of the rows of ``J``
  ``{x : J x >= 0}``: the projection is ``J^T v`` (Quinton & Rey 2024, Prop. 1).
  Solved on the unit-diagonal ``C = D^-1 G D^-1`` (``D`` the gradients' norms,
  ``v = D^-1 u``, ``u >= D lower``), so the answer does not depend on how
  differently the exits' gradients are scaled. Exact for
  ``K <= EXACT_BOX_QP_MAX_EXITS`` (every active set, ``2 ** K`` small solves);
  for more exits, accelerated projected gradient with restarts until the
  residual is at most ``tol``, at most ``max_iterations`` steps. An exit with a
  zero gradient keeps ``v_k = lower_k``.

  Args:
    gram: ``[K, K]`` Gram matrix.
    lower: ``[K]`` lower bounds.
    tol: tolerance on the residual, the length of a projected gradient step in
      ``u`` relative to ``max |u|`` (:func:`box_residual`); default 1e-5.
    max_iterations: the safeguard on the iterations beyond 8 exits; default 2000.

  Returns:
    A :class:`Solution`: ``v`` as the weights, the residual, the iterations.

  References:
    Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization*, arXiv 2024
    (2406.16232): the dual problem of UPGrad's and DualProj's projections.

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> gram = jnp.array([[1.0, -1.0], [-1.0, 2.0]])  # g1 = [1, 0], g2 = [-1, 1]
  >>> np.asarray(aj.solvers.box_qp(gram, jnp.array([1.0, 0.0])).weights).round(4)
  array([1. , 0.5], dtype=float32)
  """
  unit, norms = unit_gram(gram)
  reached = exits_reached(gram)
  bound = lower * norms
  if gram.shape[-1] <= EXACT_BOX_QP_MAX_EXITS:
    u = qp_by_active_sets(unit, jnp.zeros_like(bound), bound, reached)
    iterations: Any = 0
  else:
    step = 1.0 / jnp.maximum(jnp.sum(reached), 1).astype(gram.dtype)  # 1 / trace(C) <= 1 / L
    u, _, iterations = fista(lambda u: unit @ u, lambda u: jnp.maximum(u, bound), bound, step,
                              lambda u: box_residual(unit, u, bound), tol, max_iterations)
  return solution(u / norms, box_residual(unit, u, bound), iterations)


def project_to_simplex(v: jax.Array, support: Optional[jax.Array] = None,
                       weights: Optional[jax.Array] = None) -> jax.Array:
  """Euclidean projection of ``v`` ``[K]`` onto the probability simplex (sort-based).

  With ``support`` (``[K]`` bool), onto the face of the simplex on those
  coordinates; the others come back zero, and an empty support gives zeros.
  With ``weights`` (``[K]``, positive), onto ``{x >= 0, sum_k weights_k x_k = 1}``:
  ``x = max(v - theta weights, 0)``, the breakpoints ``v_k / weights_k`` sorted.

  Args:
    v: ``[K]`` the point to project.
    support: ``[K]`` bool, the coordinates of the face to project onto; None:
      every coordinate.
    weights: ``[K]`` positive, the weights of the constraint ``sum_k weights_k
      x_k = 1``; None: all ones (the probability simplex).

  Returns:
    ``[K]`` the projection, zero off the support.

  References:
    Held, Wolfe & Crowder, *Validation of subgradient optimization*, Mathematical
    Programming 6, 1974: the sort-based projection onto the simplex.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> aj.solvers.project_to_simplex(jnp.array([0.5, 2.0, -1.0]))
  Array([0., 1., 0.], dtype=float32)
  """
  if support is None:
    support = jnp.ones(v.shape, bool)
  m = jnp.where(support, 1.0 if weights is None else weights, 1.0).astype(v.dtype)
  order = jnp.argsort(-jnp.where(support, v / m, -jnp.inf))
  count = jnp.sum(support)
  inside = jnp.arange(1, v.shape[-1] + 1) <= count
  ms, vs = m[order], v[order]
  theta = ((jnp.cumsum(jnp.where(inside, ms * vs, 0.0)) - 1.0)
           / jnp.maximum(jnp.cumsum(jnp.where(inside, ms * ms, 0.0)), jnp.finfo(v.dtype).tiny))
  rho = jnp.maximum(jnp.sum(inside & (vs - theta * ms > 0)), 1)
  return jnp.where(support, jnp.maximum(v - theta[rho - 1] * m, 0.0), 0.0)


def simplex_start(support: jax.Array) -> jax.Array:
  """The centre of the simplex face on ``support`` (zeros when the support is empty)."""
  return support / jnp.maximum(jnp.sum(support), 1).astype(jnp.float32)


def simplex_residual(g: jax.Array, w: jax.Array, shift: jax.Array, support: jax.Array
                      ) -> jax.Array:
  """KKT residual of ``min |J^T (w + shift)|^2`` over the simplex face on ``support``.

  With ``d = J^T (w + shift)`` the optimality condition is ``<g_k, d> >= <d, J^T w>`` for
  every exit k on the face; the residual is the largest shortfall, each divided by
  ``|g_k| |d|`` (a cosine, so exits of any scale count alike).
  """
  gradient = g @ (w + shift)
  length = jnp.sqrt(jnp.maximum((w + shift) @ gradient, 0.0))
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(g), 0.0))
  shortfall = jnp.maximum(w @ gradient - gradient, 0.0)
  scale = norms * length
  ratio = jnp.where(scale > 0, shortfall / jnp.where(scale > 0, scale, 1.0), 0.0)
  return jnp.max(jnp.where(support, ratio, 0.0))


def simplex_qp(g: jax.Array, shift: jax.Array, support: jax.Array, tol: Union[float, jax.Array],
                max_iterations: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``argmin |J^T (w + shift)|^2`` over the simplex face on ``support``; ``(w, residual,
  iterations)``. Exact (active sets on the unit-diagonal Gram matrix) up to
  ``EXACT_BOX_QP_MAX_EXITS`` exits, accelerated projected gradient to ``tol`` beyond (on the
  same unit-diagonal matrix, projecting onto the simplex in its coordinates)."""
  if g.shape[-1] <= EXACT_BOX_QP_MAX_EXITS:
    unit, norms = unit_gram(g)
    inverse = jnp.where(support, 1.0 / norms, 0.0)  # w = D^-1 x: sum_k x_k / n_k = 1
    top = jnp.maximum(jnp.max(inverse), jnp.finfo(g.dtype).tiny)
    x = qp_by_active_sets(unit, (g @ shift) / norms, jnp.zeros_like(norms), support,
                           (inverse / top, 1.0 / top))
    w = x / norms
    w = jnp.where(support, w, 0.0) / jnp.maximum(jnp.sum(jnp.where(support, w, 0.0)),
                                                 jnp.finfo(g.dtype).tiny)
    iterations: Any = jnp.zeros((), jnp.int32)
  else:  # in x = D w, where the curvature is the unit-diagonal C: sum_k x_k / n_k = 1
    unit, norms = unit_gram(g)
    inverse = jnp.where(support, 1.0 / norms, 0.0)
    step = 1.0 / jnp.maximum(jnp.sum(support), 1).astype(g.dtype)  # 1 / trace(C) <= 1 / L
    x, _, iterations = fista(
        lambda x: unit @ x + (g @ shift) / norms,
        lambda x: project_to_simplex(x, support, inverse),
        simplex_start(support).astype(g.dtype) * norms, step,
        lambda x: simplex_residual(g, x / norms, shift, support), tol, max_iterations)
    w = x / norms
  return w, simplex_residual(g, w, shift, support), iterations


def min_norm_weights(gram: jax.Array, *, tol: float = 1e-5, max_iterations: int = 2000
                     ) -> Solution:
  """The point of the simplex minimizing ``a^T G a`` (MGDA).

  Only exits with a non-zero gradient in the group enter the hull: a group that
  one exit reaches moves along that exit's gradient, and a group no exit
  reaches gets zero weights. Up to ``EXACT_BOX_QP_MAX_EXITS`` exits the
  minimum is exact (every active set, solved on the unit-diagonal Gram matrix
  so that gradients of any relative scale are resolved); beyond, accelerated
  projected gradient with restarts on the same unit-diagonal matrix (MGDA is
  scale-invariant) until the residual is at most ``tol``, at most
  ``max_iterations`` steps.

  Args:
    gram: ``[K, K]`` Gram matrix.
    tol: tolerance on the residual, the largest shortfall of ``<g_k, d>`` below
      ``|d|^2`` divided by ``|g_k| |d|`` (``d`` the direction; 0 at the
      optimum); default 1e-5.
    max_iterations: the safeguard on the iterations beyond 8 exits; default 2000.

  Returns:
    A :class:`Solution` with the weights ``[K]``.

  References:
    Désidéri, *Multiple-gradient descent algorithm (MGDA) for multiobjective
    optimization*, Comptes Rendus Mathématique 350(5-6), 2012; Sener & Koltun,
    *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS 2018 (1810.04650).

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> gram = jnp.array([[1.0, -1.0], [-1.0, 2.0]])  # g1 = [1, 0], g2 = [-1, 1]
  >>> np.asarray(aj.solvers.min_norm_weights(gram).weights).round(4)
  array([0.6, 0.4], dtype=float32)
  """
  g = normalized(gram)
  w, residual, iterations = simplex_qp(g, jnp.zeros(g.shape[-1], g.dtype), exits_reached(gram),
                                       tol, max_iterations)
  return solution(w, residual, iterations)
