"""The Gram-matrix core shared by every per-exit gradient combination.

A per-exit gradient pytree has every leaf shaped ``[K, *param.shape]``. Any method
that returns a linear combination ``sum_k w_k g_k`` of the exit gradients, with
weights that depend only on inner products between them, never needs the
flattened ``[K, P]`` matrix: it needs the ``[K, K]`` Gram matrix ``G = J J^T``
(one contraction per leaf) and one weighted sum per leaf.

Leaves are grouped: each group gets its own Gram matrix and its own weights.
One group per leaf is per-tensor orthogonalization; one group for the whole
tree is orthogonalization of the full parameter vector.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any, Union

import jax
import jax.numpy as jnp

Granularity = Union[str, Any, Callable[[Any], Any]]


def check_exit_axis(updates: Any, params: Any = None) -> int:
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
  num_exits = None
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
  return num_exits


def group_ids(updates: Any, granularity: Granularity) -> tuple[tuple[int, ...], int]:
  """Maps each leaf (in flattening order) to a group index.

  Args:
    updates: per-exit gradient pytree.
    granularity: ``"leaf"`` (a group per leaf), ``"global"`` (one group), a
      pytree of hashable labels with the structure of the parameters, or a
      callable mapping the updates pytree to such labels.

  Returns:
    ``(ids, num_groups)``: a group index per leaf and the number of groups.
  """
  leaves = jax.tree_util.tree_leaves(updates)
  if isinstance(granularity, str):
    if granularity == 'leaf':
      return tuple(range(len(leaves))), len(leaves)
    if granularity == 'global':
      return (0,) * len(leaves), 1
    raise ValueError(
        f"Unknown granularity {granularity!r}: use 'leaf', 'global', a pytree "
        'of group labels with the parameters\' structure, or a callable that '
        'returns one.')
  labels = granularity(updates) if callable(granularity) else granularity
  try:
    label_leaves = jax.tree_util.tree_structure(updates).flatten_up_to(labels)
  except (ValueError, TypeError) as e:
    raise ValueError(
        'granularity as a partition must be a pytree of group labels with the '
        f'same structure as the parameters: {e}') from e
  index: dict[Hashable, int] = {}
  ids = tuple(index.setdefault(label, len(index)) for label in label_leaves)
  return ids, len(index)


def grouped_gram(updates: Any, ids: Sequence[int], num_groups: int) -> jax.Array:
  """Per-group Gram matrices of the exit gradients.

  Args:
    updates: pytree of ``[K, ...]`` leaves, any float dtype.
    ids: group index of each leaf, from :func:`group_ids`.
    num_groups: number of groups.

  Returns:
    ``[num_groups, K, K]`` float32 Gram matrices, accumulated at highest
    precision whatever the leaves' dtype.
  """
  grams = [None] * num_groups
  for gid, leaf in zip(ids, jax.tree_util.tree_leaves(updates)):
    flat = jnp.reshape(leaf, (leaf.shape[0], -1))
    g = jnp.einsum('kd,jd->kj', flat, flat,
                   precision=jax.lax.Precision.HIGHEST,
                   preferred_element_type=jnp.float32)
    grams[gid] = g if grams[gid] is None else grams[gid] + g
  return jnp.stack(grams)


def combine(updates: Any, weights: jax.Array, ids: Sequence[int]) -> Any:
  """Weighted sum over the exit axis, leaf by leaf.

  Args:
    updates: pytree of ``[K, *shape]`` leaves.
    weights: ``[num_groups, K]`` weights; leaf ``i`` uses ``weights[ids[i]]``.
    ids: group index of each leaf.

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


def average_over(updates: Any, axis_name: Any) -> Any:
  """The per-exit gradients averaged over a named data axis (``shard_map``, ``pmap``).

  Gram-Schmidt is not linear: each device's gradients must be averaged before
  the Gram matrix, never the combined directions after it.
  """
  return updates if axis_name is None else jax.lax.pmean(updates, axis_name)


def exit_grams(updates: Any, params: Any, granularity: Granularity
               ) -> tuple[int, tuple[int, ...], jax.Array]:
  """Checks per-exit updates and returns ``(K, group ids, [num_groups, K, K] Grams)``."""
  num_exits = check_exit_axis(updates, params)
  ids, num_groups = group_ids(updates, granularity)
  return num_exits, ids, grouped_gram(updates, ids, num_groups)
