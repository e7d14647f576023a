"""The Gram-matrix core shared by every per-exit gradient combination.

A per-exit gradient pytree has every leaf shaped ``[K, *param.shape]``. Any method
that returns a linear combination ``sum_k w_k g_k`` of the exit gradients, with
weights that depend only on inner products between them, never needs the
flattened ``[K, P]`` matrix: it needs the ``[K, K]`` Gram matrix ``G = J J^T``
(one contraction per leaf) and one weighted sum per leaf.

Leaves are grouped (:data:`Granularity`): each group gets its own Gram matrix
and its own weights.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Literal, Optional, Union

import jax
import jax.numpy as jnp

PyTree = Any
GroupIds = Union[Sequence[int], jax.Array]
Granularity = Union[Literal['exits', 'leaf', 'global'], PyTree, Callable[[PyTree], PyTree]]
"""How leaves are grouped: each group gets its own Gram matrix and weights.

``'exits'`` (the default of every combination): leaves reached by the same set
of exits form a group, found on device from which exits' gradients are
non-zero. A leaf reached by one exit (its head) is then moved by that exit's
gradient alone, and each shared part gets its own combination. ``'leaf'``: one
group per parameter tensor. ``'global'``: one group, the whole parameter vector.
A partition: a pytree of hashable labels with the parameters' structure (or a
callable from the parameters to one); leaves with equal labels form a group.
"""
GRANULARITIES = ('exits', 'leaf', 'global')


def check_exit_axis(updates: PyTree, params: Optional[PyTree] = None) -> int:
  """Checks that every leaf carries a leading exit axis; returns K.

  Runs on shapes only, so it raises at trace time.

  Args:
    updates: pytree whose every leaf is ``[K, *param.shape]``.
    params: optional pytree of parameters; when given, each update leaf must be
      the matching parameter's shape with the exit axis in front.

  Returns:
    The number of exits K.

  Raises:
    ValueError: when a leaf is a scalar, the leaves disagree on K, or a leaf does
      not match its parameter.
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(updates)
  if not flat:
    raise ValueError('Per-exit gradients are empty: expected a pytree of '
                     'arrays shaped [K, *param.shape].')
  same_structure = jax.tree.structure(params) == jax.tree.structure(updates)  # type: ignore[operator]
  if params is not None and same_structure and all(
      jnp.shape(u) == jnp.shape(p) for u, p in zip(jax.tree.leaves(updates),
                                                  jax.tree.leaves(params))):
    raise ValueError(
        'Per-exit gradients have exactly the parameters\' shapes: no exit axis. Compute '
        '[K, *param.shape] gradients with anytime_jax.exit_jacobian (not jax.grad of a summed '
        'loss). optax.MultiSteps around a combination also passes such updates: accumulate '
        'with anytime_jax.accumulate_exits(inner, every=..., num_exits=K) instead.')
  num_exits: Optional[int] = None
  first = ''
  for path, leaf in flat:
    name = jax.tree_util.keystr(path) or '<root>'
    if jnp.ndim(leaf) == 0:
      raise ValueError(
          f'Per-exit gradient leaf {name} is a scalar; every leaf needs a '
          'leading exit axis [K, *param.shape]. Compute the gradients with '
          'anytime_jax.exit_jacobian (or jax.jacrev of the [K] losses), not '
          'jax.grad of a summed loss.')
    k = jnp.shape(leaf)[0]
    if num_exits is None:
      num_exits, first = k, name
    elif k != num_exits:
      raise ValueError(
          f'Per-exit gradient leaves disagree on the number of exits: {first} '
          f'has K={num_exits} but {name} has K={k}. Every leaf must be '
          '[K, *param.shape] with the same K.')
  if params is not None:
    param_flat, _ = jax.tree_util.tree_flatten_with_path(params)
    if len(param_flat) != len(flat):
      raise ValueError(
          f'Per-exit gradients have {len(flat)} leaves but params have '
          f'{len(param_flat)}; they must share one tree structure.')
    for (path, leaf), (_, param) in zip(flat, param_flat):
      if tuple(jnp.shape(leaf)[1:]) != tuple(jnp.shape(param)):
        name = jax.tree_util.keystr(path) or '<root>'
        raise ValueError(
            f'Per-exit gradient leaf {name} has shape {jnp.shape(leaf)} but '
            f'its parameter has shape {jnp.shape(param)}; expected '
            f'[K, *param.shape] = [{num_exits}, *{tuple(jnp.shape(param))}]. '
            'Did you pass summed gradients, or forget the exit axis?')
  assert num_exits is not None  # flat is not empty
  return num_exits


def param_shapes(updates: PyTree) -> PyTree:
  """The parameters' shapes and dtypes from per-exit updates (the exit axis dropped)."""
  return jax.tree.map(lambda u: jax.ShapeDtypeStruct(jnp.shape(u)[1:], jnp.result_type(u)),
                      updates)


def check_granularity(granularity: Granularity) -> None:
  """Rejects a granularity string that is not one of :data:`GRANULARITIES`."""
  if isinstance(granularity, str) and granularity not in GRANULARITIES:
    raise ValueError(
        f'Unknown granularity {granularity!r}: use one of {GRANULARITIES}, a pytree of group '
        "labels with the parameters' structure, or a callable that returns one.")


def static_group_ids(params: PyTree, granularity: Granularity) -> tuple[tuple[int, ...], int]:
  """Maps each leaf (in flattening order) to a group index, from the parameters alone.

  Args:
    params: the parameters, or anything with their structure and shapes (such
      as :func:`param_shapes` of the per-exit updates): a callable granularity
      is always called on parameter-shaped leaves, at ``init`` and at ``update``.
    granularity: ``'leaf'``, ``'global'``, a pytree of hashable labels with the
      parameters' structure, or a callable mapping ``params`` to such labels.
      (``'exits'`` is decided on device from the gradients: see :func:`exit_grams`.)

  Returns:
    ``(ids, num_groups)``: a group index per leaf and the number of groups.
  """
  check_granularity(granularity)
  leaves = jax.tree_util.tree_leaves(params)
  if granularity == 'leaf':
    return tuple(range(len(leaves))), len(leaves)
  if granularity == 'global':
    return (0,) * len(leaves), 1
  if granularity == 'exits':
    raise ValueError("granularity='exits' groups leaves on device by the exits that reach "
                     'them; it has no static grouping.')
  labels = granularity(params) if callable(granularity) else granularity
  try:
    label_leaves = jax.tree_util.tree_structure(params).flatten_up_to(labels)  # type: ignore[attr-defined]
  except (ValueError, TypeError) as e:
    raise ValueError(
        'granularity as a partition must be a pytree of group labels with the '
        f'same structure as the parameters: {e}') from e
  index: dict[Hashable, int] = {}
  ids = tuple(index.setdefault(label, len(index)) for label in label_leaves)
  return ids, len(index)


def num_groups(params: PyTree, granularity: Granularity, num_exits: Optional[int]) -> int:
  """How many groups (and so Gram matrices) ``granularity`` makes; sizes per-group state.

  ``'exits'`` makes ``min(2 ** K, number of leaves)`` groups and needs ``num_exits``.
  """
  check_granularity(granularity)
  if granularity == 'exits':
    if num_exits is None:
      raise ValueError("granularity='exits' sizes its per-group state from the number of "
                       'exits: pass num_exits=K.')
    return min(2 ** num_exits, len(jax.tree_util.tree_leaves(params)))
  if granularity == 'global':
    return 1
  return static_group_ids(params, granularity)[1]


def exit_pattern_ids(leaf_grams: jax.Array) -> tuple[jax.Array, int]:
  """Groups leaves by the set of exits whose gradient reaches them (non-zero rows).

  Args:
    leaf_grams: ``[L, K, K]`` Gram matrix of each leaf; exit k reaches leaf l
      when ``leaf_grams[l, k, k] > 0``.

  Returns:
    ``(ids [L] int32, num_groups)``. With ``2 ** K <= L`` a group is a bit
    pattern of exits (``sum_k 2 ** k`` over the exits reaching it), so a group
    keeps its index from step to step; otherwise the patterns present are
    numbered in increasing order (``num_groups = L``).
  """
  num_leaves, num_exits = leaf_grams.shape[:2]
  if num_exits > 30:
    raise ValueError(f"granularity='exits' supports up to 30 exits, got K={num_exits}; "
                     'use a partition (a pytree of group labels) instead.')
  reached = jnp.diagonal(leaf_grams, axis1=1, axis2=2) > 0
  pattern = reached.astype(jnp.int32) @ (2 ** jnp.arange(num_exits, dtype=jnp.int32))
  if 2 ** num_exits <= num_leaves:
    return pattern, 2 ** num_exits
  _, ids = jnp.unique(pattern, size=num_leaves, return_inverse=True)
  return jnp.reshape(ids, (num_leaves,)).astype(jnp.int32), num_leaves


def leaf_grams(updates: PyTree) -> jax.Array:
  """``[L, K, K]`` float32 Gram matrix of every leaf, accumulated at highest precision."""
  def one(leaf):
    flat = jnp.reshape(leaf, (leaf.shape[0], -1))
    return jnp.einsum('kd,jd->kj', flat, flat, precision=jax.lax.Precision.HIGHEST,
                      preferred_element_type=jnp.float32)
  return jnp.stack([one(leaf) for leaf in jax.tree_util.tree_leaves(updates)])


def grouped_gram(leaf_gram: jax.Array, ids: GroupIds, num_groups: int) -> jax.Array:
  """Per-group Gram matrices: ``[L, K, K]`` leaf Grams summed into ``[num_groups, K, K]``."""
  return jax.ops.segment_sum(leaf_gram, jnp.asarray(ids, jnp.int32), num_segments=num_groups)


def combine(updates: PyTree, weights: jax.Array, ids: GroupIds) -> PyTree:
  """Weighted sum over the exit axis, leaf by leaf.

  Args:
    updates: pytree of ``[K, *shape]`` leaves.
    weights: ``[num_groups, K]`` weights; leaf ``i`` uses ``weights[ids[i]]``.
    ids: group index of each leaf (static, or ``[L]`` on device).

  Returns:
    Pytree of ``[*shape]`` leaves, each in its input dtype; the sum itself
    accumulates in float32.
  """
  leaves, treedef = jax.tree_util.tree_flatten(updates)
  out = [
      jnp.einsum('k,k...->...', weights[gid], leaf,
                 precision=jax.lax.Precision.HIGHEST,
                 preferred_element_type=jnp.float32).astype(leaf.dtype)
      for gid, leaf in zip(ids, leaves)
  ]
  return jax.tree_util.tree_unflatten(treedef, out)


def average_over(tree: PyTree, axis_name: Optional[Hashable]) -> PyTree:
  """The per-exit gradients averaged over a named data axis (``shard_map``, ``pmap``).

  Gram-Schmidt is not linear: each device's gradients must be averaged before
  the Gram matrix, never the combined directions after it.
  """
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def exit_grams(updates: PyTree, params: Optional[PyTree], granularity: Granularity
               ) -> tuple[int, GroupIds, jax.Array]:
  """Checks per-exit updates and returns ``(K, group ids, [num_groups, K, K] Grams)``.

  Static granularities group the leaves of :func:`param_shapes` (the same
  grouping as at ``init``); ``'exits'`` groups them on device by
  :func:`exit_pattern_ids`.
  """
  num_exits = check_exit_axis(updates, params)
  grams = leaf_grams(updates)
  if granularity == 'exits':
    ids, count = exit_pattern_ids(grams)
    return num_exits, ids, grouped_gram(grams, ids, count)
  static_ids, count = static_group_ids(param_shapes(updates), granularity)
  return num_exits, static_ids, grouped_gram(grams, static_ids, count)
