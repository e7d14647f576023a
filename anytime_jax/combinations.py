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

Inner solvers run on device with a fixed iteration count, so every method
stays inside ``jit``. Each method cites its paper.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, Literal, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from anytime_jax import gram as gram_lib
from anytime_jax.gram import Granularity, PyTree

Weighting = Callable[[jax.Array], jax.Array]
"""``weighting(gram [K, K]) -> weights [K]``, applied to every group's float32 Gram matrix."""
StatefulWeighting = Callable[..., tuple[jax.Array, Any]]
"""``weighting(grams [G, K, K], state, **extra_args) -> (weights [G, K], state)``."""


class CombinationDiagnostics(NamedTuple):
  """What a combination did at its last update (``diagnostics=True``).

  Attributes:
    weights: ``[G, K]`` the weight of each exit's gradient in each group.
    reached: ``[G, K]`` whether exit k's gradient is non-zero in group g
      (a group no exit reaches is padding of the ``'exits'`` granularity).
    grad_norms: ``[K]`` norm of each exit's gradient over all parameters.
    cosine: ``[K, K]`` cosine similarity between the exits' gradients;
      negative entries are conflicts.

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]
  >>> tx = aj.mgda(diagnostics=True, num_exits=2)
  >>> _, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> d = aj.find_diagnostics(state)
  >>> np.asarray(d.weights).round(4), bool(d.negative_weight)  # [G, K]
  (array([[0.6, 0.4]], dtype=float32), False)
  """
  weights: jax.Array
  reached: jax.Array
  grad_norms: jax.Array
  cosine: jax.Array

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


def _diagnostics(grams: jax.Array, weights: jax.Array) -> CombinationDiagnostics:
  total = jnp.sum(grams, axis=0)
  grad_norms = jnp.sqrt(jnp.maximum(jnp.diagonal(total), 0.0))
  denominator = jnp.outer(grad_norms, grad_norms)
  cosine = jnp.where(denominator > 0, total / jnp.where(denominator > 0, denominator, 1.0), 0.0)
  reached = jnp.diagonal(grams, axis1=1, axis2=2) > 0
  return CombinationDiagnostics(weights, reached, grad_norms, cosine)


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
        jnp.zeros((num_exits, num_exits), jnp.float32)))

  def update_fn(updates, state, params=None, **extra_args):
    updates = gram_lib.average_over(updates, axis_name)
    k, ids, grams = gram_lib.exit_grams(updates, params, granularity)
    if num_exits is not None and k != num_exits:
      raise ValueError(f'This combination was built for num_exits={num_exits} but got per-exit '
                       f'gradients with K={k} exits; build it with num_exits={k}.')
    inner = state.inner if diagnostics else state
    if init_state is None:
      weights = jax.vmap(weighting)(grams)
    else:
      weights, inner = weighting(grams, inner, **extra_args)
    weights = weights.astype(jnp.float32)
    if combine is None:
      out = gram_lib.combine(updates, weights, ids)
    else:
      out = combine(updates, weights, ids, grams.shape[0])
    if diagnostics:
      if weights.shape != (state.diagnostics.weights.shape):
        raise ValueError(f'diagnostics were sized for {state.diagnostics.weights.shape} '
                         f'(groups, exits) at init but the update has {weights.shape}; init with '
                         'the same parameters you update.')
      return out, DiagnosedState(inner, _diagnostics(grams, weights))
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
    weighting: without ``init_state``, ``weighting(gram [K, K]) -> [K]``,
      applied to every group's Gram matrix (float32). An exit that does not
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

def _normalized(gram: jax.Array) -> jax.Array:
  """``G / trace(G)``: eigenvalues in [0, 1]; every weighting below is scale-free."""
  return gram / jnp.maximum(jnp.trace(gram), jnp.finfo(gram.dtype).tiny)


def _reached(gram: jax.Array) -> jax.Array:
  """``[K]`` whether each exit's gradient is non-zero in this group."""
  return jnp.diagonal(gram) > 0


def _fista(grad_fn: Callable[[jax.Array], jax.Array], project: Callable[[jax.Array], jax.Array],
           start: jax.Array, step: Union[float, jax.Array], iterations: int) -> jax.Array:
  """Accelerated projected gradient (Beck & Teboulle 2009) with a fixed step and count."""
  def body(_, carry):
    x, y, t = carry
    x_next = project(y - step * grad_fn(y))
    t_next = (1 + jnp.sqrt(1 + 4 * t ** 2)) / 2
    return x_next, x_next + (t - 1) / t_next * (x_next - x), t_next
  return jax.lax.fori_loop(0, iterations, body, (start, start, jnp.ones((), start.dtype)))[0]


EXACT_BOX_QP_MAX_EXITS = 8


def _box_qp_by_active_sets(gram: jax.Array, lower: jax.Array) -> jax.Array:
  """``argmin_{v >= lower} v^T G v`` exactly: every free set, the best feasible solution.

  For each of the ``2 ** K`` free sets F (the rest held at their bound), the
  minimizer over F is ``v_F = -G_FF^+ G_FA lower_A``; the optimum is the
  feasible one with the smallest objective (one always is: the optimum's own
  free set, or a larger active set with the same objective).
  """
  g = _normalized(gram)
  k = g.shape[-1]
  free_sets = ((jnp.arange(2 ** k)[:, None] >> jnp.arange(k)) & 1).astype(g.dtype)

  def solve(free):
    held = lower * (1 - free)
    values, vectors = jnp.linalg.eigh(g * free[:, None] * free[None, :])
    keep = values > 1e-7 * jnp.max(jnp.abs(values))
    inverse = jnp.where(keep, 1.0 / jnp.where(keep, values, 1.0), 0.0)
    v = ((vectors * inverse) @ vectors.T @ (-(g @ held) * free)) * free + held
    feasible = jnp.all(v >= lower - 1e-6 * (1 + jnp.abs(lower)))
    return v, jnp.where(feasible, v @ g @ v, jnp.inf)

  candidates, objectives = jax.vmap(solve)(free_sets)
  return jnp.maximum(candidates[jnp.argmin(objectives)], lower)


def box_qp(gram: jax.Array, lower: jax.Array, iterations: int = 500) -> jax.Array:
  """``argmin_{v >= lower} v^T G v``.

  The dual of projecting ``J^T lower`` onto the dual cone of the rows of ``J``
  ``{x : J x >= 0}``: the projection is ``J^T v`` (Quinton & Rey 2024, Prop. 1).
  Exact for ``K <= EXACT_BOX_QP_MAX_EXITS`` (every active set, ``2 ** K`` small
  solves); for more exits, ``iterations`` steps of accelerated projected
  gradient, which converges slowly on nearly collinear exits (errors of a few
  percent at 500 steps, measured for K=4).
  """
  if gram.shape[-1] <= EXACT_BOX_QP_MAX_EXITS:
    return _box_qp_by_active_sets(gram, lower)
  g = _normalized(gram)  # gradient 2 g v has Lipschitz constant <= 2
  return _fista(lambda v: 2 * g @ v, lambda v: jnp.maximum(v, lower), lower, 0.5, iterations)


def project_to_simplex(v: jax.Array, support: Optional[jax.Array] = None) -> jax.Array:
  """Euclidean projection of ``v`` ``[K]`` onto the probability simplex (sort-based).

  With ``support`` (``[K]`` bool), onto the face of the simplex on those
  coordinates; the others come back zero.
  """
  if support is not None:
    v = jnp.where(support, v, -1e9)
  u = jnp.sort(v)[::-1]
  cumulative = jnp.cumsum(u) - 1.0
  index = jnp.arange(1, v.shape[-1] + 1, dtype=v.dtype)
  rho = jnp.sum(u - cumulative / index > 0)
  theta = cumulative[rho - 1] / rho.astype(v.dtype)
  return jnp.maximum(v - theta, 0.0)


def _simplex_start(support: jax.Array) -> jax.Array:
  """The centre of the simplex face on ``support`` (all of it when the support is empty)."""
  support = jnp.where(jnp.any(support), support, True)
  return support / jnp.sum(support).astype(jnp.float32)


def min_norm_weights(gram: jax.Array, iterations: int = 200) -> jax.Array:
  """The point of the simplex minimizing ``a^T G a`` (MGDA), by accelerated projected gradient.

  Only exits with a non-zero gradient in the group enter the hull: a group
  that one exit reaches moves along that exit's gradient.
  """
  g = _normalized(gram)
  support = _reached(gram)
  start = _simplex_start(support).astype(gram.dtype)
  return _fista(lambda a: 2 * g @ a, lambda a: project_to_simplex(a, support), start, 0.5,
                iterations)


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


def mgda(*, iterations: int = 200, granularity: Granularity = 'exits',
         axis_name: Optional[Hashable] = None, diagnostics: bool = False,
         num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """MGDA (Sener & Koltun, *Multi-Task Learning as Multi-Objective Optimization*, NeurIPS 2018).

  The direction is the min-norm point of the convex hull of the exit
  gradients, ``sum_k a_k g_k`` with ``a`` on the simplex, found by accelerated
  projected gradient on the Gram matrix (:func:`min_norm_weights`, any K).
  Its norm is at most that of the smallest gradient, so MGDA wants a larger
  learning rate than the summed loss.

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.mgda()
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # the min-norm point of the hull: 0.6 g1 + 0.4 g2
  array([0.2, 0.4], dtype=float32)
  """
  return gram_weighting(lambda g: min_norm_weights(g, iterations), granularity=granularity,
                        axis_name=axis_name, diagnostics=diagnostics, num_exits=num_exits)


def upgrad(*, iterations: int = 500, granularity: Granularity = 'exits',
           axis_name: Optional[Hashable] = None, diagnostics: bool = False,
           num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """UPGrad (Quinton & Rey, *Jacobian Descent for Multi-Objective Optimization*, 2024).

  Each exit gradient is projected onto the dual cone of all exit gradients
  (the directions that increase no exit's loss), and the projections are
  averaged: weights ``(1/K) sum_i argmin_{v >= e_i} v^T G v``
  (:func:`box_qp`: exact up to 8 exits, else ``iterations`` steps of
  accelerated projected gradient).

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
    return jnp.mean(jax.vmap(lambda e: box_qp(gram, e, iterations))(eye), axis=0)
  return gram_weighting(weights, granularity=granularity, axis_name=axis_name,
                        diagnostics=diagnostics, num_exits=num_exits)


def dualproj(*, iterations: int = 500, granularity: Granularity = 'exits',
             axis_name: Optional[Hashable] = None, diagnostics: bool = False,
             num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """DualProj (Quinton & Rey 2024): the mean gradient projected onto the dual cone.

  Weights ``argmin_{v >= 1/K} v^T G v`` (:func:`box_qp`: exact up to 8
  exits, else ``iterations`` steps of accelerated projected gradient): the
  closest direction to the mean gradient that increases no exit's loss.

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
    return box_qp(gram, jnp.full(k, 1.0 / k, gram.dtype), iterations)
  return gram_weighting(weights, granularity=granularity, axis_name=axis_name,
                        diagnostics=diagnostics, num_exits=num_exits)


def cagrad_weights(gram: jax.Array, c: Union[float, jax.Array] = 0.5, iterations: int = 2000,
                   smoothing: float = 1e-6) -> jax.Array:
  """CAGrad's weights: ``1/K + lambda w``, then divided by ``1 + c^2``.

  ``w`` minimizes ``w^T G g0 + c |g0| |G w|`` over the simplex of the exits
  that reach the group (``g0`` the mean gradient), by accelerated projected
  gradient on the trace-normalized Gram matrix with the norm smoothed as
  ``sqrt(q + smoothing)``; ``lambda = c |g0| / |g_w|``.
  """
  k = gram.shape[-1]
  g = _normalized(gram)
  support = _reached(gram)
  mean = jnp.full(k, 1.0 / k, gram.dtype)
  radius = c * jnp.sqrt(jnp.maximum(mean @ g @ mean, 0.0))
  linear = g @ mean

  def grad_fn(w):
    return linear + radius * (g @ w) / jnp.sqrt(w @ g @ w + smoothing)

  step = 1.0 / (1.0 + radius / jnp.sqrt(smoothing))  # the smoothed objective's curvature bound
  w = _fista(grad_fn, lambda a: project_to_simplex(a, support),
             _simplex_start(support).astype(gram.dtype), step, iterations)
  norm_w = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
  lam = jnp.where(norm_w > 0, radius / jnp.where(norm_w > 0, norm_w, 1.0), 0.0)
  return (mean + lam * w) / (1 + c ** 2)


def cagrad(*, c: float = 0.5, iterations: int = 2000, granularity: Granularity = 'exits',
           axis_name: Optional[Hashable] = None, diagnostics: bool = False,
           num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """CAGrad (Liu, Liu, Jin, Stone, Liu, *Conflict-Averse Gradient Descent for Multi-task
  Learning*, NeurIPS 2021).

  The direction maximizes the worst exit's improvement within a ball of
  radius ``c |g0|`` around the mean gradient ``g0``; rescaled by ``1/(1+c^2)``
  as in the authors' code (``rescale=1``). See :func:`cagrad_weights`.

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.cagrad(c=0.5)
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # the mean pulled toward the exit that gains least
  array([0.2, 0.4], dtype=float32)
  """
  return gram_weighting(lambda g: cagrad_weights(g, c, iterations), granularity=granularity,
                        axis_name=axis_name, diagnostics=diagnostics, num_exits=num_exits)


def _pinv_psd(gram: jax.Array, rtol: float = 1e-6) -> jax.Array:
  """Pseudo-inverse of a symmetric PSD matrix, eigenvalues below ``rtol * max`` dropped."""
  values, vectors = jnp.linalg.eigh(gram)
  keep = values > rtol * jnp.max(values)
  inverse = jnp.where(keep, 1.0 / jnp.where(keep, values, 1.0), 0.0)
  return (vectors * inverse) @ vectors.T


def imtl_g_weights(gram: jax.Array) -> jax.Array:
  """IMTL-G's weights: ``a = G^+ n / |1^T G^+ n|`` with ``n_k = |g_k|``.

  Then ``d = J^T a`` has the same, positive projection on every exit's unit
  gradient (``(G a)_k / n_k`` equal for all k; exactly so when ``n`` lies in
  ``G``'s range). The paper normalizes by ``1^T G^+ n`` so that the weights
  sum to 1; for ill-conditioned ``G`` that sum can be negative, which would
  turn the direction uphill for every exit. Dividing by its absolute value
  keeps the paper's direction whenever the sum is positive and descent on
  every exit when it is not.
  """
  v = _pinv_psd(gram) @ jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  total = jnp.abs(jnp.sum(v))
  return jnp.where(total > 1e-12, v / jnp.where(total > 1e-12, total, 1.0), 0.0)


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


def nash_mtl_weights(gram: jax.Array, iterations: int = 50, ridge: float = 1e-6,
                     max_weight: Optional[float] = None) -> jax.Array:
  """Nash-MTL's weights: ``a > 0`` with ``a_k (G a)_k = 1`` for every k.

  ``G`` is normalized by its Frobenius norm (as in the authors' code) and given
  a ridge ``ridge * I`` so that a solution exists for rank-deficient
  gradients. The solution minimizes ``a^T G a / 2 - sum_k log a_k``, a
  self-concordant function: ``iterations`` damped Newton steps
  (step ``1 / (1 + decrement)``), which stay positive and converge
  quadratically once close. Opposing exits drive the weights up (about 1000
  for two exactly opposed gradients); ``max_weight`` caps each weight.
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
  a = jax.lax.fori_loop(0, iterations, newton, start)
  return a if max_weight is None else jnp.minimum(a, max_weight)


def nash_mtl(*, iterations: int = 50, max_weight: Optional[float] = None,
             granularity: Granularity = 'exits', axis_name: Optional[Hashable] = None,
             diagnostics: bool = False, num_exits: Optional[int] = None
             ) -> optax.GradientTransformationExtraArgs:
  """Nash-MTL (Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, *Multi-Task
  Learning as a Bargaining Game*, ICML 2022): the Nash bargaining solution
  ``G a = 1 / a`` (:func:`nash_mtl_weights`), solved exactly each step, each
  weight capped at ``max_weight`` if given (the authors' sequential convex
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
  return gram_weighting(lambda g: nash_mtl_weights(g, iterations, max_weight=max_weight),
                        granularity=granularity, axis_name=axis_name, diagnostics=diagnostics,
                        num_exits=num_exits)


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


def fairgrad_weights(gram: jax.Array, alpha: Union[float, jax.Array] = 1.0,
                     iterations: int = 100) -> jax.Array:
  """FairGrad's weights: ``w > 0`` with ``(G w)_k = w_k^(-1/alpha)`` for every k.

  As the authors' code, on the raw Gram matrix (the solution scales with the
  gradients). The equations are the stationarity conditions of the convex
  ``w^T G w / 2 - sum_k h(w_k)`` with ``h' (w) = w^(-1/alpha)``: ``iterations``
  Newton steps damped by ``1 / (1 + decrement)`` and kept positive. Exits that
  do not reach the group get weight 0. ``alpha = 1`` is Nash-MTL's equation
  (on the unnormalized Gram matrix).
  """
  reached = _reached(gram)
  k = gram.shape[-1]
  # An unreached exit gets the equation w = w^(-1/alpha), solved by 1, then weight 0.
  g = gram + jnp.diag(jnp.where(reached, 0.0, 1.0)).astype(gram.dtype)
  power = -1.0 / alpha

  def newton(_, w):
    grad = g @ w - w ** power
    hessian = g + jnp.diag(-power * w ** (power - 1.0))
    direction = jnp.linalg.solve(hessian, grad)
    decrement = jnp.sqrt(jnp.maximum(grad @ direction, 0.0))
    step = 1.0 / (1.0 + decrement)
    # Never leave the positive orthant: at most 90 % of the way to the boundary.
    limit = jnp.min(jnp.where(direction > 0, w / jnp.where(direction > 0, direction, 1.0),
                              jnp.inf))
    return w - jnp.minimum(step, 0.9 * limit) * direction

  w = jax.lax.fori_loop(0, iterations, newton, jnp.ones(k, gram.dtype))
  return jnp.where(reached, w, 0.0)


def fairgrad(*, alpha: float = 1.0, iterations: int = 100, granularity: Granularity = 'exits',
             axis_name: Optional[Hashable] = None, diagnostics: bool = False,
             num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """FairGrad (Ban & Ji, *Fair Resource Allocation in Multi-Task Learning*, ICML 2024):
  alpha-fair weights, ``G w = w^(-1/alpha)`` (:func:`fairgrad_weights`; the
  authors solve it with ``scipy.optimize.least_squares``, we by damped Newton
  on device). Larger ``alpha`` favours the exits that gain least.

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.fairgrad(alpha=2.0)
  >>> updates, state = tx.update(jac, tx.init({'w': jnp.zeros(2)}))
  >>> np.asarray(updates['w']).round(4)  # weights 2.174, 1.496: (G w)_k = w_k^(-1/2)
  array([0.6782, 1.4958], dtype=float32)
  """
  if not alpha > 0:
    raise ValueError(f'fairgrad(alpha=...) must be positive, got {alpha!r}.')
  return gram_weighting(lambda g: fairgrad_weights(g, alpha, iterations),
                        granularity=granularity, axis_name=axis_name, diagnostics=diagnostics,
                        num_exits=num_exits)


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
