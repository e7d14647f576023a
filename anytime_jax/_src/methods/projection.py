"""Methods that project conflicting gradients onto each other: PCGrad and GradVac."""

from __future__ import annotations

from collections.abc import Hashable
from typing import NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from anytime_jax._src.combination import gram_weighting
from anytime_jax._src.gram import Granularity
from anytime_jax._src.registry import register

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
  plane of every g_j it conflicts with (negative inner product with the g_i
  projected so far); the g_j are the original gradients, and a zero g_j is
  skipped.

  Args:
    gram: ``[K, K]`` Gram matrix ``G[i, j] = <g_i, g_j>``.
    order: ``[K]`` int, a permutation of ``range(K)``: the order in which the
      other exits are visited (the same for every i; i itself is skipped).

  Returns:
    ``[K, K]`` coefficients ``C`` with the projected ``g_i = sum_j C[i, j] g_j``;
    PCGrad's weights are ``C.sum(axis=0)``.

  References:
    * Yu, Kumar, Gupta, Levine, Hausman, Finn. *Gradient Surgery for Multi-Task
      Learning*. NeurIPS 2020. https://arxiv.org/abs/2001.06782
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


@register(family='projection', ordered=True)
def pcgrad(*, seed: int = 0, granularity: Granularity = 'exits',
           axis_name: Optional[Hashable] = None, diagnostics: bool = False,
           num_exits: Optional[int] = None) -> optax.GradientTransformationExtraArgs:
  """PCGrad: projects away each exit gradient's conflicts with the others, then sums them.

  Every exit's gradient is projected onto the normal plane of each other exit
  gradient it conflicts with (negative inner product), the others visited in a
  random order drawn anew each step (one order for all exits and groups); the
  projected gradients are summed (:func:`pcgrad_coefficients`).

  Args:
    seed: an int, the seed of the PRNG key from which each step's order is
      drawn (kept in :class:`PCGradState`). Default ``0``.
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
    takes per-exit gradients, every leaf ``[K, *param.shape]``, and returns the sum of the
    projected gradients per group, every leaf ``[*param.shape]`` in its input dtype, with the
    new state (:class:`PCGradState`, inside a :class:`anytime_jax.DiagnosedState` with
    ``diagnostics=True``).

  References:
    * Yu, Kumar, Gupta, Levine, Hausman, Finn. *Gradient Surgery for Multi-Task
      Learning*. NeurIPS 2020. https://arxiv.org/abs/2001.06782

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

  Args:
    gram: ``[K, K]`` Gram matrix ``G[i, j] = <g_i, g_j>``.
    target: ``[K, K]`` the target cosines, ``target[i, j]`` for modifying g_i
      towards g_j (the diagonal is unused), in ``[-1, 1]``.
    order: ``[K]`` int, a permutation of ``range(K)``: the order in which the
      other exits are visited (the same for every i).
    beta: the targets' averaging rate in ``[0, 1]``, a float or a scalar array.

  Returns:
    ``(C, new_target)``: ``[K, K]`` coefficients with the modified
    ``g_i = sum_j C[i, j] g_j`` (GradVac's weights are ``C.sum(axis=0)``), and
    the ``[K, K]`` updated targets.

  References:
    * Wang, Tsvetkov, Firat, Cao. *Gradient Vaccine: Investigating and Improving
      Multi-task Optimization in Massively Multilingual Models*. ICLR 2021.
      https://arxiv.org/abs/2010.05874
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


@register(family='projection', needs_num_exits=True, ordered=True)
def gradvac(*, num_exits: int, beta: float = 0.01, seed: int = 0,
            granularity: Granularity = 'exits', axis_name: Optional[Hashable] = None,
            diagnostics: bool = False) -> optax.GradientTransformationExtraArgs:
  """GradVac: pulls every pair of exit gradients towards a running target cosine, then sums.

  Like PCGrad, but every pair of exits is pulled towards a target cosine (a
  running average of the pair's observed cosines, rate ``beta``) rather than
  only to orthogonality when they conflict; the other exits are visited in a
  random order drawn anew each step (:func:`gradvac_coefficients`). The
  targets start at 0, so the first step is PCGrad's. Each group keeps its own
  targets, so ``init`` needs the parameters unless ``granularity='global'``.

  Args:
    num_exits: K, the number of exits, a positive int, to size
      :class:`GradVacState`; required.
    beta: the targets' averaging rate in ``[0, 1]``: each step a target moves to
      ``(1 - beta) t + beta phi``. Default ``0.01`` (the paper's).
    seed: an int, the seed of the PRNG key from which each step's order is
      drawn. Default ``0``.
    granularity: how leaves are grouped, each group with its own Gram matrix and
      weights (:data:`anytime_jax.gram.Granularity`: ``'exits'``, ``'leaf'``,
      ``'global'`` or a partition), as in :func:`anytime_jax.gram_weighting`.
      Default ``'exits'`` (leaves reached by the same set of exits together).
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name: the
      per-exit gradients are averaged over it first, as in
      :func:`anytime_jax.gram_weighting`. Default ``None`` (no averaging; not
      needed under ``jit`` with a sharded batch).
    diagnostics: keep the last update's weights, gradient norms and cosines in
      the state (:class:`anytime_jax.CombinationDiagnostics`, read with
      :func:`anytime_jax.find_diagnostics`). Default ``False``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state, params=None)``
    takes per-exit gradients, every leaf ``[K, *param.shape]``, and returns the sum of the
    modified gradients per group, every leaf ``[*param.shape]`` in its input dtype, with the new
    state (:class:`GradVacState`, inside a :class:`anytime_jax.DiagnosedState` with
    ``diagnostics=True``).

  References:
    * Wang, Tsvetkov, Firat, Cao. *Gradient Vaccine: Investigating and Improving
      Multi-task Optimization in Massively Multilingual Models*. ICLR 2021.
      https://arxiv.org/abs/2010.05874

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
