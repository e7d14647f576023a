"""The Gram core every combination of per-exit gradients is built on.

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
from typing import Any, NamedTuple, Optional, TypeVar, Union

import jax
import jax.numpy as jnp
import optax

from anytime_jax._src import gram as gram_lib
from anytime_jax._src.gram import Granularity, PyTree

State = TypeVar('State')
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
  >>> s = aj.solvers.nash_mtl_weights(gram)
  >>> np.asarray(s.weights).round(4), bool(s.residual < 1e-5), int(s.iterations) < 10
  (array([3.0055, 2.1252], dtype=float32), True, True)
  """
  weights: jax.Array
  residual: jax.Array
  iterations: jax.Array
  fallback: jax.Array


def solution(weights: jax.Array, residual: Any = 0.0, iterations: Any = 0,
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
  return find_state(opt_state, CombinationDiagnostics)


def find_state(opt_state: Any, kind: type[State]) -> Optional[State]:
  """The first node of type ``kind`` inside an optimizer state (a chain's, nested), or ``None``."""
  found = [x for x in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, kind))
           if isinstance(x, kind)]
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
        jnp.zeros((num_exits, num_exits), jnp.float32), *closed_form(zeros)[1:]))

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
      solved = closed_form(solved)
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

  The combinations of this library are built on it: a method that returns
  ``sum_k w_k g_k`` with weights depending only on the ``[K, K]`` Gram matrix
  ``G = J J^T`` of the exits' gradients needs no flattened Jacobian. Per group
  of leaves, one ``[K, K]`` contraction per leaf gives ``G``, ``weighting``
  turns it into ``w`` on device, and one weighted sum per leaf gives the
  update.

  Args:
    weighting: without ``init_state``, ``weighting(gram [K, K]) -> [K]`` (or a
      :class:`Solution`, whose residual, iterations and fallback flag
      ``diagnostics`` keep), applied to every group's Gram matrix (float32). An
      exit that does not reach a group has a zero row and column there. With
      ``init_state``, ``weighting(grams [G, K, K], state, **extra_args) ->
      (weights [G, K], state)``, called once per update with every group's Gram
      matrix and the update's extra keyword arguments (e.g. ``losses=``).
      Required.
    granularity: how leaves are grouped, each group with its own Gram matrix
      and weights (:data:`anytime_jax.gram.Granularity`): ``'exits'`` (leaves
      reached by the same set of exits together), ``'leaf'`` (each parameter
      tensor on its own), ``'global'`` (all leaves together) or a partition.
      Default ``'exits'``.
    init_state: ``init_state(num_groups) -> state`` for stateful weightings;
      ``num_groups`` is ``None`` when it cannot be known at init (no ``params``
      given, or ``'exits'`` without ``num_exits``). Default ``None`` (a
      stateless weighting of one Gram matrix at a time).
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name:
      the per-exit gradients are averaged over it before the Gram matrix.
      Default ``None`` (no averaging): not needed under ``jit`` with a sharded
      batch, where the per-exit gradients of the global-batch losses are
      already the averaged ones.
    diagnostics: keep the last update's weights, gradient norms and cosines
      (and the solver's residual, iterations and fallback flag) in the state
      (:class:`DiagnosedState`, read with :func:`find_diagnostics`); needs
      ``num_exits``. Default ``False``.
    num_exits: K, the number of exits, a positive int; needed for
      ``diagnostics``, checked against the updates when given. Default ``None``
      (K read from the updates).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state,
    params=None, **extra_args)`` takes per-exit gradients, every leaf
    ``[K, *param.shape]``, and returns ``sum_k w_k g_k`` per group, every leaf
    ``[*param.shape]`` in its input dtype, with the new state (``init_state``'s,
    ``optax.EmptyState()`` without it, inside a :class:`DiagnosedState` with
    ``diagnostics=True``).

  References:
    * Quinton, Rey. *Jacobian Descent for Multi-Objective Optimization*. arXiv preprint,
      2024. https://arxiv.org/abs/2406.16232 (combining the rows of the Jacobian through
      its Gramian)

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


def closed_form(weights: jax.Array) -> Solution:
  """``[G, K]`` weights of a method without a solver, as a :class:`Solution` per group."""
  groups = weights.shape[0]
  return Solution(weights, jnp.zeros(groups, jnp.float32), jnp.zeros(groups, jnp.int32),
                  jnp.zeros(groups, bool))
