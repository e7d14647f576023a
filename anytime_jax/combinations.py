"""Every combination of per-exit gradients, on one Gram core.

Most ways of combining per-task (here: per-exit) gradients ``g_1..g_K`` return
a linear combination ``sum_k w_k g_k`` whose weights depend only on the inner
products ``G = J J^T`` (the ``[K, K]`` Gram matrix). :func:`gram_weighting`
turns such a weighting into an optax transformation with the contract of
:func:`anytime_jax.orthogonalize`: per-exit gradients in (every leaf
``[K, *param.shape]``), ordinary gradients out, any granularity, jittable,
dtype kept. The Jacobian is never flattened: one ``[K, K]`` contraction per
leaf, the weighting on device, one weighted sum per leaf.

Conventions shared by every factory here:

* hyperparameters are keyword-only (``pcgrad(seed=1)``, never ``pcgrad(1)``);
* ``granularity`` defaults to ``'exits'`` (:data:`anytime_jax.gram.Granularity`):
  leaves reached by the same exits are combined together, so a leaf that
  only exit k reaches (exit k's head) moves along ``g_k`` alone, with a
  positive weight, whatever the method does with the shared parameters;
* ``num_exits`` is asked for only where a state must be sized by it;
* ``axis_name``: inside ``shard_map``/``pmap``, the per-exit gradients (and
  the ``losses=`` a method reads) are averaged over that axis first;
* ``diagnostics=True`` (needs ``num_exits``) keeps the last weights in the
  state (:class:`CombinationDiagnostics`, found by :func:`find_diagnostics`).

Inner solvers run on device inside ``jit`` and stop on a tolerance of their
method's own optimality condition, with a maximum iteration count as a
safeguard (both keyword options); with ``diagnostics=True`` the residual and
the iterations used are kept. Finite gradients give finite weights (a group no
exit reaches gets a zero update); non-finite gradients propagate to the
update, so that a training loop's divergence check sees them. Each method
cites its paper.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Literal, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from anytime_jax import gram as gram_lib
from anytime_jax.gram import Granularity, PyTree

Weighting = Callable[[jax.Array], Any]
"""``weighting(gram [K, K]) -> weights [K]`` (or a :class:`Solution`), applied to every
group's float32 Gram matrix."""
StatefulWeighting = Callable[..., tuple[jax.Array, Any]]
"""``weighting(grams [G, K, K], state, **extra_args) -> (weights [G, K], state)``."""


class Solution(NamedTuple):
  """A weighting's answer with how well it solved its method's condition.

  A weighting passed to :func:`gram_weighting` may return one instead of the
  bare weights; ``diagnostics=True`` then keeps the last three fields per group
  (:class:`CombinationDiagnostics`).

  Attributes:
    weights: ``[K]`` the weight of each exit's gradient.
    residual: scalar, the method's own optimality residual (documented with
      each solver; 0 for closed forms).
    iterations: scalar int32, iterations the solver used (0 for closed forms
      and the exact active-set solvers).
    fallback: scalar bool, whether the method's own direction was replaced by
      its documented fallback (IMTL-G).

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> gram = jnp.array([[1.0, -1.0], [-1.0, 2.0]])  # g1 = [1, 0], g2 = [-1, 1]
  >>> s = aj.combinations.nash_mtl_weights(gram)
  >>> np.asarray(s.weights).round(4), bool(s.residual < 1e-5), int(s.iterations) < 10
  (array([3.0055, 2.1252], dtype=float32), True, True)
  """
  weights: jax.Array
  residual: jax.Array
  iterations: jax.Array
  fallback: jax.Array


def _solution(weights: jax.Array, residual: Any = 0.0, iterations: Any = 0,
              fallback: Any = False) -> Solution:
  return Solution(weights, jnp.asarray(residual, jnp.float32), jnp.asarray(iterations, jnp.int32),
                  jnp.asarray(fallback, bool))


class CombinationDiagnostics(NamedTuple):
  """What a combination did at its last update (``diagnostics=True``).

  Attributes:
    weights: ``[G, K]`` the weight of each exit's gradient in each group.
    reached: ``[G, K]`` whether exit k's gradient is non-zero in group g
      (a group no exit reaches is padding of the ``'exits'`` granularity).
    grad_norms: ``[K]`` norm of each exit's gradient over all parameters.
    cosine: ``[K, K]`` cosine similarity between the exits' gradients;
      negative entries are conflicts.
    residual: ``[G]`` the solver's residual of the method's optimality
      condition in each group (0 for closed forms; see each method).
    iterations: ``[G]`` the iterations its solver used (0 for closed forms).
    fallback: ``[G]`` whether the method fell back to its documented
      alternative direction in the group (IMTL-G).

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]
  >>> tx = aj.mgda(diagnostics=True, num_exits=2)
  >>> _, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> d = aj.find_diagnostics(state)
  >>> np.asarray(d.weights).round(4), bool(d.negative_weight)  # [G, K]
  (array([[0.6, 0.4]], dtype=float32), False)
  >>> bool(d.residual[0] < 1e-5), bool(d.fallback[0])
  (True, False)
  """
  weights: jax.Array
  reached: jax.Array
  grad_norms: jax.Array
  cosine: jax.Array
  residual: Optional[jax.Array] = None
  iterations: Optional[jax.Array] = None
  fallback: Optional[jax.Array] = None

  @property
  def negative_weight(self) -> jax.Array:
    """Whether any exit that reaches a group has a negative weight there (scalar bool)."""
    return jnp.any((self.weights < 0) & self.reached)


class DiagnosedState(NamedTuple):
  """State of a combination built with ``diagnostics=True``.

  Attributes:
    inner: the method's own state (``optax.EmptyState()`` if it has none).
    diagnostics: the last update's :class:`CombinationDiagnostics`.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> tx = aj.pcgrad(diagnostics=True, num_exits=2)
  >>> state = tx.init({'w': jnp.zeros(2)})
  >>> type(state.inner).__name__, state.diagnostics.weights.shape
  ('PCGradState', (1, 2))
  """
  inner: Any
  diagnostics: CombinationDiagnostics


def find_diagnostics(opt_state: Any) -> Optional[CombinationDiagnostics]:
  """The :class:`CombinationDiagnostics` inside an optimizer state (e.g. a chain's), or ``None``.

  Example:

  >>> import jax.numpy as jnp, numpy as np, optax, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = optax.chain(aj.sum_exits(diagnostics=True, num_exits=2), optax.sgd(0.1))
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> d = aj.find_diagnostics(state)
  >>> d.weights  # [G, K]
  Array([[1., 1.]], dtype=float32)
  >>> np.asarray(d.cosine).round(4)  # [K, K]: the exits conflict
  array([[ 1.    , -0.7071],
         [-0.7071,  1.    ]], dtype=float32)
  """
  is_diagnostics = lambda x: isinstance(x, CombinationDiagnostics)
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=is_diagnostics) if is_diagnostics(x)]
  return found[0] if found else None


def _diagnostics(grams: jax.Array, solved: Solution) -> CombinationDiagnostics:
  total = jnp.sum(grams, axis=0)
  grad_norms = jnp.sqrt(jnp.maximum(jnp.diagonal(total), 0.0))
  denominator = jnp.outer(grad_norms, grad_norms)
  cosine = jnp.where(denominator > 0, total / jnp.where(denominator > 0, denominator, 1.0), 0.0)
  reached = jnp.diagonal(grams, axis1=1, axis2=2) > 0
  return CombinationDiagnostics(solved.weights, reached, grad_norms, cosine, solved.residual,
                                solved.iterations, solved.fallback)


GroupCombine = Callable[[PyTree, jax.Array, gram_lib.GroupIds, int], PyTree]


def combination(
    weighting: Union[Weighting, StatefulWeighting],
    *,
    granularity: Granularity,
    init_state: Optional[Callable[[Optional[int]], Any]],
    axis_name: Optional[Hashable],
    diagnostics: bool,
    num_exits: Optional[int],
    combine: Optional[GroupCombine] = None,
) -> optax.GradientTransformationExtraArgs:
  """The transformation behind :func:`gram_weighting` and :func:`anytime_jax.orthogonalize`.

  ``combine(updates, weights [G, K], ids, num_groups)`` replaces the weighted
  sum (OSGD's ``algorithm='vectors'``); the default is
  :func:`anytime_jax.gram.combine`.
  """
  gram_lib.check_granularity(granularity)
  if diagnostics and num_exits is None:
    raise ValueError('diagnostics=True needs num_exits=K to size its state; pass the number '
                     'of exits of your network.')
  if num_exits is not None and (not isinstance(num_exits, int) or num_exits < 1):
    raise ValueError(f'num_exits must be a positive integer, got {num_exits!r}.')

  def count_groups(params: Optional[PyTree]) -> Optional[int]:
    if granularity == 'global':
      return 1
    if params is None or (granularity == 'exits' and num_exits is None):
      return None
    return gram_lib.num_groups(params, granularity, num_exits)

  def init_fn(params):
    groups = count_groups(params)
    inner = optax.EmptyState() if init_state is None else init_state(groups)
    if not diagnostics:
      return inner
    if groups is None:
      raise ValueError('diagnostics=True keeps weights per group: pass the parameters to init '
                       '(tx.init(params)).')
    zeros = jnp.zeros((groups, num_exits), jnp.float32)
    return DiagnosedState(inner, CombinationDiagnostics(
        zeros, zeros.astype(bool), jnp.zeros(num_exits, jnp.float32),
        jnp.zeros((num_exits, num_exits), jnp.float32), *_closed_form(zeros)[1:]))

  def update_fn(updates, state, params=None, **extra_args):
    updates = gram_lib.average_over(updates, axis_name)
    k, ids, grams = gram_lib.exit_grams(updates, params, granularity)
    if num_exits is not None and k != num_exits:
      raise ValueError(f'This combination was built for num_exits={num_exits} but got per-exit '
                       f'gradients with K={k} exits; build it with num_exits={k}.')
    inner = state.inner if diagnostics else state
    if init_state is None:
      solved = jax.vmap(weighting)(grams)
    else:
      solved, inner = weighting(grams, inner, **extra_args)
    if not isinstance(solved, Solution):
      solved = _closed_form(solved)
    weights = solved.weights.astype(jnp.float32)
    if combine is None:
      out = gram_lib.combine(updates, weights, ids)
    else:
      out = combine(updates, weights, ids, grams.shape[0])
    if diagnostics:
      if weights.shape != (state.diagnostics.weights.shape):
        raise ValueError(f'diagnostics were sized for {state.diagnostics.weights.shape} '
                         f'(groups, exits) at init but the update has {weights.shape}; init with '
                         'the same parameters you update.')
      return out, DiagnosedState(inner, _diagnostics(grams, solved._replace(weights=weights)))
    return out, inner

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def gram_weighting(
    weighting: Union[Weighting, StatefulWeighting],
    *,
    granularity: Granularity = 'exits',
    init_state: Optional[Callable[[Optional[int]], Any]] = None,
    axis_name: Optional[Hashable] = None,
    diagnostics: bool = False,
    num_exits: Optional[int] = None,
) -> optax.GradientTransformationExtraArgs:
  """An optax transformation summing exit gradients with Gram-derived weights.

  Args:
    weighting: without ``init_state``, ``weighting(gram [K, K]) -> [K]`` (or a
      :class:`Solution`, whose residual, iterations and fallback flag
      ``diagnostics`` keep), applied to every group's Gram matrix (float32). An exit that does not
      reach a group has a zero row and column there. With ``init_state``,
      ``weighting(grams [G, K, K], state, **extra_args) -> (weights [G, K],
      state)``, called once per update with every group's Gram matrix and the
      update's extra keyword arguments (e.g. ``losses=``).
    granularity: how leaves are grouped (:data:`anytime_jax.gram.Granularity`);
      default ``'exits'``.
    init_state: ``init_state(num_groups) -> state`` for stateful weightings;
      ``num_groups`` is ``None`` when it cannot be known at init (no ``params``
      given, or ``'exits'`` without ``num_exits``).
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name:
      the per-exit gradients are averaged over it before the Gram matrix.
      Not needed under ``jit`` with a sharded batch, where the per-exit
      gradients of the global-batch losses are already the averaged ones.
    diagnostics: keep the last weights in the state (:class:`DiagnosedState`).
    num_exits: K; needed for ``diagnostics``, checked against the updates when
      given.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` that takes per-exit gradients
    and returns ``sum_k w_k g_k`` per group, each leaf in its input dtype.

  Example: weight each exit by the inverse of its gradient's norm:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> tx = aj.gram_weighting(lambda g: jax.lax.rsqrt(jnp.diagonal(g)), granularity='global')
  >>> jac = {'w': jnp.array([[3.0, 4.0], [0.0, 2.0]])}  # K=2 exits, one [2] parameter
  >>> out, _ = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> out['w']
  Array([0.6, 1.8], dtype=float32)
  """
  return combination(weighting, granularity=granularity, init_state=init_state,
                     axis_name=axis_name, diagnostics=diagnostics, num_exits=num_exits)


# ----- solvers shared by the methods -----

def _closed_form(weights: jax.Array) -> Solution:
  """``[G, K]`` weights of a method without a solver, as a :class:`Solution` per group."""
  groups = weights.shape[0]
  return Solution(weights, jnp.zeros(groups, jnp.float32), jnp.zeros(groups, jnp.int32),
                  jnp.zeros(groups, bool))


def _normalized(gram: jax.Array) -> jax.Array:
  """``G / trace(G)``: eigenvalues in [0, 1]; every weighting below is scale-free."""
  return gram / jnp.maximum(jnp.trace(gram), jnp.finfo(gram.dtype).tiny)


def _reached(gram: jax.Array) -> jax.Array:
  """``[K]`` whether each exit's gradient is non-zero in this group."""
  return jnp.diagonal(gram) > 0


def _unit(gram: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(C, n)`` with ``G = diag(n) C diag(n)``: C has a unit diagonal on the exits that reach
  the group (zero rows elsewhere), n the gradients' norms (1 where zero).

  Solving in C rather than G keeps float32 accurate when the gradients' norms differ by
  orders of magnitude (a norm ratio of 1e6 is 1e12 between G's eigenvalues).
  """
  reached = _reached(gram)
  norms = jnp.where(reached, jnp.sqrt(jnp.where(reached, jnp.diagonal(gram), 1.0)), 1.0)
  unit = gram / norms[:, None] / norms[None, :]
  return jnp.where(reached[:, None] & reached[None, :], unit, 0.0), norms


def _iterate(step: Callable[[Any], Any], residual: Callable[[Any], jax.Array], start: Any,
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


def _fista(grad_fn: Callable[[jax.Array], jax.Array], project: Callable[[jax.Array], jax.Array],
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

  (x, _, _), r, i = _iterate(body, lambda carry: residual(carry[0]),
                             (start, start, jnp.ones((), start.dtype)), tol, max_iterations)
  return x, r, i


def _symmetric_solve(matrix: jax.Array, rhs: jax.Array, rtol: float = 1e-6) -> jax.Array:
  """Least-norm solution of a symmetric (possibly singular, indefinite) system, by eigh."""
  values, vectors = jnp.linalg.eigh(matrix)
  keep = jnp.abs(values) > rtol * jnp.max(jnp.abs(values))
  inverse = jnp.where(keep, 1.0 / jnp.where(keep, values, 1.0), 0.0)
  return (vectors * inverse) @ (vectors.T @ rhs)


EXACT_BOX_QP_MAX_EXITS = 8
"""Up to this many exits, :func:`box_qp` and :func:`min_norm_weights` are exact (every active
set, ``2 ** K`` small solves); beyond it they iterate to a tolerance."""


def _qp_by_active_sets(unit: jax.Array, linear: jax.Array, lower: jax.Array,
                       allowed: jax.Array, total: Optional[tuple[jax.Array, jax.Array]] = None
                       ) -> jax.Array:
  """``argmin x^T C x / 2 + linear^T x`` over ``x >= lower`` (``x_k = lower_k`` where not
  ``allowed``), with ``m^T x = rho`` if ``total = (m, rho)``, exactly.

  For each of the ``2 ** K`` free sets F (the rest held at their bound) the
  minimizer on F solves a small KKT system; the optimum is the feasible one
  with the smallest objective (some free set of the optimum gives a
  non-singular system). ``C`` is a unit-diagonal Gram matrix (:func:`_unit`),
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
      x = _symmetric_solve(system, rhs) * f + held
      balanced = True
    else:
      m, rho = total
      border = jnp.concatenate([m * f, jnp.zeros(1, dtype)])
      system = jnp.concatenate([jnp.concatenate([system, (m * f)[None]]), border[:, None]], 1)
      x = _symmetric_solve(system, jnp.concatenate([rhs, (rho - m @ held)[None]]))[:k] * f + held
      balanced = jnp.abs(m @ x - rho) <= 1e-4 * jnp.abs(rho) + 1e-30
    feasible = balanced & jnp.all(x >= lower - 1e-5 * (jnp.max(jnp.abs(x)) + jnp.abs(lower)))
    if total is not None:
      feasible = feasible & jnp.any(free)
    return x, jnp.where(feasible, x @ unit @ x / 2 + linear @ x, jnp.inf)

  candidates, objectives = jax.vmap(solve)(free_sets)
  return jnp.maximum(candidates[jnp.argmin(objectives)], lower)


def _box_residual(unit: jax.Array, x: jax.Array, lower: jax.Array) -> jax.Array:
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
      ``u`` relative to ``max |u|`` (:func:`_box_residual`); default 1e-5.
    max_iterations: the safeguard on the iterations beyond 8 exits; default 2000.

  Returns:
    A :class:`Solution`: ``v`` as the weights, the residual, the iterations.

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> gram = jnp.array([[1.0, -1.0], [-1.0, 2.0]])  # g1 = [1, 0], g2 = [-1, 1]
  >>> np.asarray(aj.combinations.box_qp(gram, jnp.array([1.0, 0.0])).weights).round(4)
  array([1. , 0.5], dtype=float32)
  """
  unit, norms = _unit(gram)
  reached = _reached(gram)
  bound = lower * norms
  if gram.shape[-1] <= EXACT_BOX_QP_MAX_EXITS:
    u = _qp_by_active_sets(unit, jnp.zeros_like(bound), bound, reached)
    iterations: Any = 0
  else:
    step = 1.0 / jnp.maximum(jnp.sum(reached), 1).astype(gram.dtype)  # 1 / trace(C) <= 1 / L
    u, _, iterations = _fista(lambda u: unit @ u, lambda u: jnp.maximum(u, bound), bound, step,
                              lambda u: _box_residual(unit, u, bound), tol, max_iterations)
  return _solution(u / norms, _box_residual(unit, u, bound), iterations)


def project_to_simplex(v: jax.Array, support: Optional[jax.Array] = None,
                       weights: Optional[jax.Array] = None) -> jax.Array:
  """Euclidean projection of ``v`` ``[K]`` onto the probability simplex (sort-based).

  With ``support`` (``[K]`` bool), onto the face of the simplex on those
  coordinates; the others come back zero, and an empty support gives zeros.
  With ``weights`` (``[K]``, positive), onto ``{x >= 0, sum_k weights_k x_k = 1}``:
  ``x = max(v - theta weights, 0)``, the breakpoints ``v_k / weights_k`` sorted.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> aj.combinations.project_to_simplex(jnp.array([0.5, 2.0, -1.0]))
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


def _simplex_start(support: jax.Array) -> jax.Array:
  """The centre of the simplex face on ``support`` (zeros when the support is empty)."""
  return support / jnp.maximum(jnp.sum(support), 1).astype(jnp.float32)


def _simplex_residual(g: jax.Array, w: jax.Array, shift: jax.Array, support: jax.Array
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


def _simplex_qp(g: jax.Array, shift: jax.Array, support: jax.Array, tol: Union[float, jax.Array],
                max_iterations: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``argmin |J^T (w + shift)|^2`` over the simplex face on ``support``; ``(w, residual,
  iterations)``. Exact (active sets on the unit-diagonal Gram matrix) up to
  ``EXACT_BOX_QP_MAX_EXITS`` exits, accelerated projected gradient to ``tol`` beyond (on the
  same unit-diagonal matrix, projecting onto the simplex in its coordinates)."""
  if g.shape[-1] <= EXACT_BOX_QP_MAX_EXITS:
    unit, norms = _unit(g)
    inverse = jnp.where(support, 1.0 / norms, 0.0)  # w = D^-1 x: sum_k x_k / n_k = 1
    top = jnp.maximum(jnp.max(inverse), jnp.finfo(g.dtype).tiny)
    x = _qp_by_active_sets(unit, (g @ shift) / norms, jnp.zeros_like(norms), support,
                           (inverse / top, 1.0 / top))
    w = x / norms
    w = jnp.where(support, w, 0.0) / jnp.maximum(jnp.sum(jnp.where(support, w, 0.0)),
                                                 jnp.finfo(g.dtype).tiny)
    iterations: Any = jnp.zeros((), jnp.int32)
  else:  # in x = D w, where the curvature is the unit-diagonal C: sum_k x_k / n_k = 1
    unit, norms = _unit(g)
    inverse = jnp.where(support, 1.0 / norms, 0.0)
    step = 1.0 / jnp.maximum(jnp.sum(support), 1).astype(g.dtype)  # 1 / trace(C) <= 1 / L
    x, _, iterations = _fista(
        lambda x: unit @ x + (g @ shift) / norms,
        lambda x: project_to_simplex(x, support, inverse),
        _simplex_start(support).astype(g.dtype) * norms, step,
        lambda x: _simplex_residual(g, x / norms, shift, support), tol, max_iterations)
    w = x / norms
  return w, _simplex_residual(g, w, shift, support), iterations


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

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> gram = jnp.array([[1.0, -1.0], [-1.0, 2.0]])  # g1 = [1, 0], g2 = [-1, 1]
  >>> np.asarray(aj.combinations.min_norm_weights(gram).weights).round(4)
  array([0.6, 0.4], dtype=float32)
  """
  g = _normalized(gram)
  w, residual, iterations = _simplex_qp(g, jnp.zeros(g.shape[-1], g.dtype), _reached(gram), tol,
                                        max_iterations)
  return _solution(w, residual, iterations)


# ----- the methods -----

def sum_exits(*, granularity: Granularity = 'exits', axis_name: Optional[Hashable] = None,
              diagnostics: bool = False, num_exits: Optional[int] = None
              ) -> optax.GradientTransformationExtraArgs:
  """The plain sum of the exit gradients: SGD on the summed losses.

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> tx = aj.sum_exits()
  >>> out, _ = tx.update({'w': jnp.array([[1.0, 2.0], [3.0, -1.0]])}, tx.init(None))
  >>> out['w']
  Array([4., 1.], dtype=float32)
  """
  return gram_weighting(lambda g: jnp.ones(g.shape[-1], g.dtype), granularity=granularity,
                        axis_name=axis_name, diagnostics=diagnostics, num_exits=num_exits)


def mean_exits(*, granularity: Granularity = 'exits', axis_name: Optional[Hashable] = None,
               diagnostics: bool = False, num_exits: Optional[int] = None
               ) -> optax.GradientTransformationExtraArgs:
  """The mean of the exit gradients: SGD on the averaged losses.

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> tx = aj.mean_exits()
  >>> out, _ = tx.update({'w': jnp.array([[1.0, 2.0], [3.0, -1.0]])}, tx.init(None))
  >>> out['w']
  Array([2. , 0.5], dtype=float32)
  """
  return gram_weighting(lambda g: jnp.full(g.shape[-1], 1.0 / g.shape[-1], g.dtype),
                        granularity=granularity, axis_name=axis_name, diagnostics=diagnostics,
                        num_exits=num_exits)


class PCGradState(NamedTuple):
  """State of :func:`pcgrad`.

  Attributes:
    key: the PRNG key from which the next step's order of exits is drawn.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> state = aj.pcgrad(seed=1).init({'w': jnp.zeros(2)})
  >>> state._fields  # a PRNG key: each step's order of the exits
  ('key',)
  """
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


def pcgrad(*, seed: int = 0, granularity: Granularity = 'exits',
           axis_name: Optional[Hashable] = None, diagnostics: bool = False,
           num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """PCGrad (Yu et al., *Gradient Surgery for Multi-Task Learning*, NeurIPS 2020).

  Every exit's gradient is projected onto the normal plane of each other exit
  gradient it conflicts with, the others visited in a random order drawn anew
  each step; the projected gradients are summed.

  Args:
    seed: seed of the per-step random orders (:class:`PCGradState`).
    granularity, axis_name, diagnostics, num_exits: as in :func:`gram_weighting`.

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.pcgrad()
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # conflicts projected away: [0.5, 0.5] + [0, 1]
  array([0.5, 1.5], dtype=float32)
  """
  if not isinstance(seed, int):
    raise ValueError(f'pcgrad(seed=...) must be an integer, got {seed!r}.')

  def weighting(grams, state, **_):
    key, use = jax.random.split(state.key)  # never draw from a key that is kept
    order = jax.random.permutation(use, grams.shape[-1])
    weights = jax.vmap(lambda g: jnp.sum(pcgrad_coefficients(g, order), axis=0))(grams)
    return weights, PCGradState(key)

  return gram_weighting(weighting, granularity=granularity, axis_name=axis_name,
                        init_state=lambda groups: PCGradState(jax.random.key(seed)),
                        diagnostics=diagnostics, num_exits=num_exits)


def mgda(*, tol: float = 1e-5, max_iterations: int = 2000, granularity: Granularity = 'exits',
         axis_name: Optional[Hashable] = None, diagnostics: bool = False,
         num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """MGDA (Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS 2018).

  The direction is the min-norm point of the convex hull of the exit
  gradients, ``sum_k a_k g_k`` with ``a`` on the simplex (:func:`min_norm_weights`:
  exact up to 8 exits, iterated to ``tol`` beyond). It improves every exit
  whenever some direction does. Its norm is at most that of the smallest
  gradient, so MGDA wants a larger learning rate than the summed loss.

  Args:
    tol: tolerance on :func:`min_norm_weights`' residual (more than 8 exits); default 1e-5.
    max_iterations: the solver's safeguard (more than 8 exits); default 2000.
    granularity, axis_name, diagnostics, num_exits: as in :func:`gram_weighting`.

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.mgda()
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # the min-norm point of the hull: 0.6 g1 + 0.4 g2
  array([0.2, 0.4], dtype=float32)
  """
  return gram_weighting(lambda g: min_norm_weights(g, tol=tol, max_iterations=max_iterations),
                        granularity=granularity, axis_name=axis_name, diagnostics=diagnostics,
                        num_exits=num_exits)


def upgrad(*, tol: float = 1e-5, max_iterations: int = 2000, granularity: Granularity = 'exits',
           axis_name: Optional[Hashable] = None, diagnostics: bool = False,
           num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """UPGrad (Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization*, 2024).

  Each exit gradient is projected onto the dual cone of all exit gradients
  (the directions that increase no exit's loss), and the projections are
  averaged: weights ``(1/K) sum_i argmin_{v >= e_i} v^T G v``
  (:func:`box_qp`: exact up to 8 exits, else accelerated projected gradient
  to ``tol``, at most ``max_iterations`` steps; the reported residual is the
  largest of the K problems').

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
    each = jax.vmap(lambda e: box_qp(gram, e, tol=tol, max_iterations=max_iterations))(eye)
    return _solution(jnp.mean(each.weights, axis=0), jnp.max(each.residual),
                     jnp.max(each.iterations))
  return gram_weighting(weights, granularity=granularity, axis_name=axis_name,
                        diagnostics=diagnostics, num_exits=num_exits)


def dualproj(*, tol: float = 1e-5, max_iterations: int = 2000, granularity: Granularity = 'exits',
             axis_name: Optional[Hashable] = None, diagnostics: bool = False,
             num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """DualProj (Quinton & Rey 2024): the mean gradient projected onto the dual cone.

  Weights ``argmin_{v >= 1/K} v^T G v`` (:func:`box_qp`: exact up to 8
  exits, else accelerated projected gradient to ``tol``, at most
  ``max_iterations`` steps): the closest direction to the mean gradient that
  increases no exit's loss.

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
    return box_qp(gram, jnp.full(k, 1.0 / k, gram.dtype), tol=tol, max_iterations=max_iterations)
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

  Args:
    gram: ``[K, K]`` Gram matrix.
    c: the radius of the ball around ``g0``, relative to ``|g0|``.
    tol: tolerance on the residual: with ``d = g0 + r g_w / |g_w|``, optimality
      is ``<g_k, d> >= F(w)`` for every exit (the worst exit improves by
      ``F(w)``, which bounds the best possible improvement from above); the
      residual is the largest shortfall divided by ``|g_k| |d|``; default 1e-4.
    max_iterations: the safeguard on the bisections; default 64.

  Where no direction of the ball improves every exit and the exits' hull holds
  the origin, ``|g_w|`` can fall below what float32 resolves; the bisection
  then stops at ``max_iterations`` short of the optimum, with a residual of 1.

  Returns:
    A :class:`Solution` with the weights ``[K]``.
  """
  k = gram.shape[-1]
  g = _normalized(gram)
  support = _reached(gram)
  tiny = jnp.finfo(g.dtype).tiny
  mean = jnp.full(k, 1.0 / k, g.dtype)
  linear = g @ mean
  radius = c * jnp.sqrt(jnp.maximum(mean @ linear, 0.0))
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(g), 0.0))
  safe_radius = jnp.where(radius > 0, radius, 1.0)

  def solve(s):  # argmin_w |g_w|^2 / (2 s) + <g0, g_w> / r: the min-norm point of g_w + s g0 / r
    return _simplex_qp(g, s / safe_radius * mean, support, tol, 2000)[0]

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
  min_norm = _simplex_qp(g, jnp.zeros(k, g.dtype), support, tol, 2000)[0]
  low = jnp.maximum(jnp.sqrt(jnp.maximum(min_norm @ g @ min_norm, 0.0)), 1e-9 * high)
  start = _simplex_start(support).astype(g.dtype)
  (_, _, w), r, iterations = _iterate(bisect, lambda carry: residual(carry[2]),
                                      (jnp.maximum(low, tiny), jnp.maximum(high, tiny), start),
                                      tol, max_iterations)
  norm_w = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
  lam = jnp.where(norm_w > 0, radius / jnp.where(norm_w > 0, norm_w, 1.0), 0.0)
  return _solution((mean + lam * w) / (1 + c ** 2), r, iterations)


def cagrad(*, c: float = 0.5, tol: float = 1e-4, max_iterations: int = 64,
           granularity: Granularity = 'exits', axis_name: Optional[Hashable] = None,
           diagnostics: bool = False, num_exits: Optional[int] = None
           ) -> optax.GradientTransformationExtraArgs:
  """CAGrad (Liu, Liu, Jin, Stone, Liu, *Conflict-Averse Gradient Descent for Multi-task
  Learning*, NeurIPS 2021).

  The direction maximizes the worst exit's improvement within a ball of
  radius ``c |g0|`` around the mean gradient ``g0``; rescaled by ``1/(1+c^2)``
  as in the authors' code (``rescale=1``). See :func:`cagrad_weights` for the
  solver, its tolerance ``tol`` (default 1e-4) and ``max_iterations`` (64).
  It improves every exit whenever some direction in the ball does.

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
  unit, norms = _unit(gram)
  reached = _reached(gram)
  v = jnp.where(reached, _pinv_psd(unit) @ reached.astype(gram.dtype) / norms, 0.0)
  total = jnp.abs(jnp.sum(v))
  a = jnp.where(total > 0, v / jnp.where(total > 0, total, 1.0), 0.0)
  def extremes(a):  # the largest and smallest projection (G a)_k / n_k over the reached exits
    projections = (gram @ a) / norms
    return (jnp.max(jnp.where(reached, projections, -jnp.inf)),
            jnp.min(jnp.where(reached, projections, jnp.inf)))

  fallback = jnp.any(reached) & ~(extremes(a)[1] > 0)
  a = jnp.where(fallback, min_norm_weights(gram).weights, a)
  top, bottom = extremes(a)
  spread = jnp.where(top > 0, (top - bottom) / jnp.where(top > 0, top, 1.0), 0.0)
  return _solution(a, spread, 0, fallback)


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

  return _iterate(step, residual, start, tol, max_iterations)


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
  unit, norms = _unit(gram)
  reached = _reached(gram)
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
  return _solution(a if max_weight is None else jnp.minimum(a, max_weight), residual, iterations)


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


def config_weights(gram: jax.Array) -> jax.Array:
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


def config(*, granularity: Granularity = 'exits', axis_name: Optional[Hashable] = None,
           diagnostics: bool = False, num_exits: Optional[int] = None
           ) -> optax.GradientTransformationExtraArgs:
  """ConFIG (Liu, Chu, Thuerey, *ConFIG: Towards Conflict-free Training of Physics Informed
  Neural Networks*, ICLR 2025): the direction with the same positive projection on
  every exit's unit gradient, as long as the exits' gradients project on it in
  total (:func:`config_weights`; the paper's main method, without its momentum
  variant M-ConFIG).

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.config()
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # equal angles with both exits' gradients
  array([0.3536, 0.8536], dtype=float32)
  """
  return gram_weighting(config_weights, granularity=granularity, axis_name=axis_name,
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
  reached = _reached(gram)
  scale = jnp.maximum(jnp.trace(gram), jnp.finfo(gram.dtype).tiny)
  # An unreached exit gets the equation w = w^(-1/alpha), solved by 1, then weight 0.
  g = gram / scale + jnp.diag(jnp.where(reached, ridge * jnp.diagonal(gram) / scale, 1.0))
  power = -1.0 / alpha
  start = jnp.diagonal(g) ** (-alpha / (1.0 + alpha))  # solves G_kk w_k = w_k^(-1/alpha)
  w, residual, iterations = _newton(
      g, lambda w: -power * w ** (power - 1.0), lambda w: g @ w - w ** power,
      lambda w: jnp.max(jnp.abs((g @ w) * w ** (-power) - 1.0)), start, tol, max_iterations)
  return _solution(jnp.where(reached, w * scale ** (-alpha / (1.0 + alpha)), 0.0), residual,
                   iterations)


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


class GradVacState(NamedTuple):
  """State of :func:`gradvac`.

  Attributes:
    key: the PRNG key from which the next step's order of exits is drawn.
    target: ``[G, K, K]`` running targets of the pairwise cosines, per group.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> state = aj.gradvac(num_exits=2).init({'w': jnp.zeros(2)})
  >>> state.target.shape  # [G, K, K]: one group for the one leaf
  (1, 2, 2)
  """
  key: jax.Array
  target: jax.Array


def gradvac_coefficients(gram: jax.Array, target: jax.Array, order: jax.Array,
                         beta: Union[float, jax.Array]) -> tuple[jax.Array, jax.Array]:
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


def gradvac(*, num_exits: int, beta: float = 0.01, seed: int = 0,
            granularity: Granularity = 'exits', axis_name: Optional[Hashable] = None,
            diagnostics: bool = False) -> optax.GradientTransformationExtraArgs:
  """GradVac (Wang, Tsvetkov, Firat, Cao, *Gradient Vaccine: Investigating and Improving
  Multi-task Optimization in Massively Multilingual Models*, ICLR 2021).

  Like PCGrad, but every pair of exits is pulled towards a target cosine (a
  running average of the pair's observed cosines, rate ``beta``) rather than
  only to orthogonality when they conflict; the other exits are visited in a
  random order drawn anew each step. Each group keeps its own targets, so
  ``init`` needs the parameters unless ``granularity='global'``.

  Args:
    num_exits: K, to size :class:`GradVacState`.
    beta: the targets' averaging rate.
    seed: seed of the per-step orders.
    granularity, axis_name, diagnostics: as in :func:`gram_weighting`.

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.gradvac(num_exits=2)
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # the first step's cosine target is 0: PCGrad's direction
  array([0.5, 1.5], dtype=float32)
  """
  def init_state(groups):
    if groups is None:
      raise ValueError('gradvac keeps targets per group: pass the parameters to init '
                       "(tx.init(params)) or use granularity='global'.")
    return GradVacState(jax.random.key(seed),
                        jnp.zeros((groups, num_exits, num_exits), jnp.float32))

  def weighting(grams, state, **_):
    if state.target.shape[0] != grams.shape[0]:
      raise ValueError(f'gradvac was initialized for {state.target.shape[0]} groups but the '
                       f'update has {grams.shape[0]}: init with the parameters you update.')
    key, use = jax.random.split(state.key)
    order = jax.random.permutation(use, num_exits)
    coeffs, targets = jax.vmap(lambda g, t: gradvac_coefficients(g, t, order, beta))(
        grams, state.target)
    return jnp.sum(coeffs, axis=1), GradVacState(key, targets)

  return gram_weighting(weighting, granularity=granularity, axis_name=axis_name,
                        init_state=init_state, diagnostics=diagnostics, num_exits=num_exits)
