"""Methods that solve a small QP on the Gram matrix: MGDA, UPGrad, DualProj and CAGrad."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Optional, Union

import jax
import jax.numpy as jnp
import optax

from anytime_jax._src.combination import Solution, solution, gram_weighting
from anytime_jax._src.gram import Granularity
from anytime_jax._src import solvers
from anytime_jax._src.registry import register

@register(family='min_norm', descent='all')
def mgda(*, tol: float = 1e-5, max_iterations: int = 2000, granularity: Granularity = 'exits',
         axis_name: Optional[Hashable] = None, diagnostics: bool = False,
         num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """MGDA: the min-norm point of the convex hull of the exit gradients.

  The direction is the min-norm point of the convex hull of the exit
  gradients, ``sum_k a_k g_k`` with ``a`` on the simplex (:func:`min_norm_weights`:
  exact up to 8 exits, iterated to ``tol`` beyond); only the exits that reach a
  group enter its hull. It improves every exit whenever some direction does.
  Its norm is at most that of the smallest gradient, so MGDA wants a larger
  learning rate than the summed loss.

  Args:
    tol: tolerance, ``> 0``, on :func:`min_norm_weights`' residual (the largest
      shortfall of ``<g_k, d>`` below ``|d|^2``, over ``|g_k| |d|``); used
      beyond 8 exits, where the solver iterates (up to 8 it is exact). Default
      ``1e-5``.
    max_iterations: the solver's safeguard, a positive int: at most this many
      iterations beyond 8 exits. Default ``2000``.
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
    takes per-exit gradients, every leaf ``[K, *param.shape]``, and returns the min-norm
    direction ``sum_k a_k g_k`` per group, every leaf ``[*param.shape]`` in its input dtype,
    with the new state (``optax.EmptyState()``, inside a :class:`anytime_jax.DiagnosedState`
    with ``diagnostics=True``).

  References:
    * Désidéri. *Multiple-gradient descent algorithm (MGDA) for multiobjective
      optimization*. Comptes Rendus Mathématique 350(5-6), 2012.
      https://doi.org/10.1016/j.crma.2012.03.014
    * Sener, Koltun. *Multi-Task Learning as Multi-Objective Optimization*. NeurIPS 2018.
      https://arxiv.org/abs/1810.04650

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.mgda()
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # the min-norm point of the hull: 0.6 g1 + 0.4 g2
  array([0.2, 0.4], dtype=float32)
  """
  return gram_weighting(lambda g: solvers.min_norm_weights(g, tol=tol, max_iterations=max_iterations),
                        granularity=granularity, axis_name=axis_name, diagnostics=diagnostics,
                        num_exits=num_exits)


@register(family='min_norm', descent='all')
def upgrad(*, tol: float = 1e-5, max_iterations: int = 2000, granularity: Granularity = 'exits',
           axis_name: Optional[Hashable] = None, diagnostics: bool = False,
           num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """UPGrad: the mean of the exit gradients' projections onto their dual cone.

  Each exit gradient is projected onto the dual cone of all exit gradients
  (the directions that increase no exit's loss), and the projections are
  averaged: weights ``(1/K) sum_i argmin_{v >= e_i} v^T G v``
  (:func:`box_qp`: exact up to 8 exits, else accelerated projected gradient
  to ``tol``, at most ``max_iterations`` steps; the reported residual is the
  largest of the K problems').

  Args:
    tol: tolerance, ``> 0``, on :func:`box_qp`'s residual (the length of a
      projected gradient step, relative); used beyond 8 exits, where the solver
      iterates (up to 8 it is exact). Default ``1e-5``.
    max_iterations: the solver's safeguard, a positive int: at most this many
      iterations beyond 8 exits. Default ``2000``.
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
    takes per-exit gradients, every leaf ``[K, *param.shape]``, and returns the mean of the K
    projections per group, every leaf ``[*param.shape]`` in its input dtype, with the new state
    (``optax.EmptyState()``, inside a :class:`anytime_jax.DiagnosedState` with
    ``diagnostics=True``).

  References:
    * Quinton, Rey. *Jacobian Descent for Multi-Objective Optimization*. arXiv preprint,
      2024. https://arxiv.org/abs/2406.16232

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.upgrad()
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # the mean of each gradient's projection onto the dual cone
  array([0.25, 0.75], dtype=float32)
  """
  def weights(gram):
    eye = jnp.eye(gram.shape[-1], dtype=gram.dtype)
    each = jax.vmap(lambda e: solvers.box_qp(gram, e, tol=tol, max_iterations=max_iterations))(eye)
    return solution(jnp.mean(each.weights, axis=0), jnp.max(each.residual),
                     jnp.max(each.iterations))
  return gram_weighting(weights, granularity=granularity, axis_name=axis_name,
                        diagnostics=diagnostics, num_exits=num_exits)


@register(family='min_norm', descent='all')
def dualproj(*, tol: float = 1e-5, max_iterations: int = 2000, granularity: Granularity = 'exits',
             axis_name: Optional[Hashable] = None, diagnostics: bool = False,
             num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """DualProj: the mean exit gradient projected onto the dual cone of the exit gradients.

  Weights ``argmin_{v >= 1/K} v^T G v`` (:func:`box_qp`: exact up to 8
  exits, else accelerated projected gradient to ``tol``, at most
  ``max_iterations`` steps): the closest direction to the mean gradient that
  increases no exit's loss (the dual cone ``{d : <g_k, d> >= 0 for every k}``),
  as GEM projects a gradient so that no earlier task's loss increases.

  Args:
    tol: tolerance, ``> 0``, on :func:`box_qp`'s residual (the length of a
      projected gradient step, relative); used beyond 8 exits, where the solver
      iterates (up to 8 it is exact). Default ``1e-5``.
    max_iterations: the solver's safeguard, a positive int: at most this many
      iterations beyond 8 exits. Default ``2000``.
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
    takes per-exit gradients, every leaf ``[K, *param.shape]``, and returns the projected mean
    gradient per group, every leaf ``[*param.shape]`` in its input dtype, with the new state
    (``optax.EmptyState()``, inside a :class:`anytime_jax.DiagnosedState` with
    ``diagnostics=True``).

  References:
    * Quinton, Rey. *Jacobian Descent for Multi-Objective Optimization*. arXiv preprint,
      2024. https://arxiv.org/abs/2406.16232
    * Lopez-Paz, Ranzato. *Gradient Episodic Memory for Continual Learning*. NeurIPS 2017.
      https://arxiv.org/abs/1706.08840

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.dualproj()
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # the mean gradient: it already conflicts with neither exit
  array([0. , 0.5], dtype=float32)
  """
  def weights(gram):
    k = gram.shape[-1]
    return solvers.box_qp(gram, jnp.full(k, 1.0 / k, gram.dtype), tol=tol, max_iterations=max_iterations)
  return gram_weighting(weights, granularity=granularity, axis_name=axis_name,
                        diagnostics=diagnostics, num_exits=num_exits)


def cagrad_weights(gram: jax.Array, c: Union[float, jax.Array] = 0.5, *, tol: float = 1e-4,
                   max_iterations: int = 64) -> Solution:
  """CAGrad's weights: ``1/K + lambda w``, then divided by ``1 + c^2``.

  ``w`` minimizes ``F(w) = w^T G g0 + r |g_w|`` over the simplex of the exits
  that reach the group (``g0`` the mean gradient, ``g_w = J^T w``, ``r = c
  |g0|``), on the trace-normalized Gram matrix (CAGrad is scale-invariant);
  ``lambda = r / |g_w|``. Since ``|g_w| = min_s (|g_w|^2 / s + s) / 2``, ``F``'s
  minimum is that of a convex function of one variable ``s``, each value a
  min-norm problem on the simplex (exact up to 8 exits); ``s`` is bisected
  (geometrically, between the min-norm point's norm and the largest
  gradient's) until the residual is at most ``tol``, at most
  ``max_iterations`` bisections.

  Where no direction of the ball improves every exit and the exits' hull holds
  the origin, ``|g_w|`` can fall below what float32 resolves; the bisection
  then stops at ``max_iterations`` short of the optimum, with a residual of 1.

  Args:
    gram: ``[K, K]`` Gram matrix ``G[i, j] = <g_i, g_j>``.
    c: the radius of the ball around ``g0``, relative to ``|g0|``, ``>= 0`` (0
      gives the mean gradient). Default ``0.5``.
    tol: tolerance on the residual: with ``d = g0 + r g_w / |g_w|``, optimality
      is ``<g_k, d> >= F(w)`` for every exit (the worst exit improves by
      ``F(w)``, which bounds the best possible improvement from above); the
      residual is the largest shortfall divided by ``|g_k| |d|``. Default
      ``1e-4``.
    max_iterations: the safeguard on the bisections, a positive int. Default
      ``64``.

  Returns:
    A :class:`Solution` with the weights ``[K]``, ``(1/K + lambda w) / (1 +
    c^2)``, the residual and the bisections used.

  References:
    * Liu, Liu, Jin, Stone, Liu. *Conflict-Averse Gradient Descent for Multi-task
      Learning*. NeurIPS 2021. https://arxiv.org/abs/2110.14048
  """
  k = gram.shape[-1]
  g = solvers.normalized(gram)
  support = solvers.exits_reached(gram)
  tiny = jnp.finfo(g.dtype).tiny
  mean = jnp.full(k, 1.0 / k, g.dtype)
  linear = g @ mean
  radius = c * jnp.sqrt(jnp.maximum(mean @ linear, 0.0))
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(g), 0.0))
  safe_radius = jnp.where(radius > 0, radius, 1.0)

  def solve(s):  # argmin_w |g_w|^2 / (2 s) + <g0, g_w> / r: the min-norm point of g_w + s g0 / r
    return solvers.simplex_qp(g, s / safe_radius * mean, support, tol, 2000)[0]

  def residual(w):
    gw = g @ w
    norm_w = jnp.sqrt(jnp.maximum(w @ gw, 0.0))
    unit = jnp.where(norm_w > 0, gw / jnp.where(norm_w > 0, norm_w, 1.0), 0.0)
    rows = linear + radius * unit  # <g_k, d>
    value = linear @ w + radius * norm_w  # F(w)
    length = jnp.sqrt(jnp.maximum(mean @ linear + 2 * radius * (mean @ unit) + radius ** 2, 0.0))
    scale = norms * length
    ratio = jnp.where(scale > 0, jnp.maximum(value - rows, 0.0) / jnp.where(scale > 0, scale, 1.0),
                      0.0)
    # g_w = 0 (to float32) leaves d's direction open: not certified, so report 1 rather than 0.
    shortfall = jnp.where(norm_w > 0, jnp.max(jnp.where(support, ratio, 0.0)), 1.0)
    return jnp.where(radius > 0, shortfall, 0.0)

  def bisect(carry):
    low, high, _ = carry
    middle = jnp.sqrt(low * high)
    w = solve(middle)
    above = w @ g @ w > middle ** 2  # F's derivative in s is negative: the optimum is above
    return jnp.where(above, middle, low), jnp.where(above, high, middle), w

  high = jnp.max(jnp.where(support, norms, 0.0))
  min_norm = solvers.simplex_qp(g, jnp.zeros(k, g.dtype), support, tol, 2000)[0]
  low = jnp.maximum(jnp.sqrt(jnp.maximum(min_norm @ g @ min_norm, 0.0)), 1e-9 * high)
  start = solvers.simplex_start(support).astype(g.dtype)
  (_, _, w), r, iterations = solvers.iterate(bisect, lambda carry: residual(carry[2]),
                                      (jnp.maximum(low, tiny), jnp.maximum(high, tiny), start),
                                      tol, max_iterations)
  norm_w = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
  lam = jnp.where(norm_w > 0, radius / jnp.where(norm_w > 0, norm_w, 1.0), 0.0)
  return solution((mean + lam * w) / (1 + c ** 2), r, iterations)


@register(family='min_norm', descent='all')
def cagrad(*, c: float = 0.5, tol: float = 1e-4, max_iterations: int = 64,
           granularity: Granularity = 'exits', axis_name: Optional[Hashable] = None,
           diagnostics: bool = False, num_exits: Optional[int] = None
           ) -> optax.GradientTransformationExtraArgs:
  """CAGrad: the best worst-exit improvement within a ball around the mean gradient.

  The direction maximizes the worst exit's improvement within a ball of
  radius ``c |g0|`` around the mean gradient ``g0``; rescaled by ``1/(1+c^2)``
  as in the authors' code (``rescale=1``). See :func:`cagrad_weights` for the
  solver. It improves every exit whenever some direction in the ball does.

  Args:
    c: the radius of the ball around the mean gradient ``g0``, relative to
      ``|g0|``, ``>= 0``: 0 is the mean gradient; larger values weigh the worst
      exit more. Default ``0.5``.
    tol: tolerance, ``> 0``, on :func:`cagrad_weights`' residual (the worst
      exit's shortfall from the optimality condition, over ``|g_k| |d|``).
      Default ``1e-4``.
    max_iterations: the safeguard on :func:`cagrad_weights`' bisections, a
      positive int. Default ``64``.
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
    takes per-exit gradients, every leaf ``[K, *param.shape]``, and returns
    ``(g0 + c |g0| g_w / |g_w|) / (1 + c^2)`` per group (``g_w`` as in :func:`cagrad_weights`),
    every leaf ``[*param.shape]`` in its input dtype, with the new state
    (``optax.EmptyState()``, inside a :class:`anytime_jax.DiagnosedState` with
    ``diagnostics=True``).

  References:
    * Liu, Liu, Jin, Stone, Liu. *Conflict-Averse Gradient Descent for Multi-task
      Learning*. NeurIPS 2021. https://arxiv.org/abs/2110.14048

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.cagrad(c=0.5)
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # the mean pulled toward the exit that gains least
  array([0.2, 0.4], dtype=float32)
  """
  return gram_weighting(lambda g: cagrad_weights(g, c, tol=tol, max_iterations=max_iterations),
                        granularity=granularity, axis_name=axis_name, diagnostics=diagnostics,
                        num_exits=num_exits)
