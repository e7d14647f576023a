"""Per-exit gradients: the Jacobian of the K exit losses with respect to params."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp


class Gradients(NamedTuple):
  """What every gradient function of the library returns: ``grads, losses, aux = ...``.

  Attributes:
    grads: the parameters' structure; per-exit functions give every leaf a
      leading exit axis ``[K, *leaf.shape]`` (row k: exit k's gradient),
      :func:`anytime_jax.summed_loss_gradient` the plain ``[*leaf.shape]``.
    losses: ``[K]`` per-exit losses, exit order.
    aux: what else the computation returns: ``loss_fn``'s auxiliary output
      (:func:`exit_jacobian` with ``has_aux``), the stages' updated states
      (the staged engine: BatchNorm statistics and other collections), or
      ``None``.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> loss_fn = lambda w: jnp.stack([jnp.sum(w ** 2), jnp.sum(w)])  # [K=2] exit losses
  >>> grads, losses, aux = aj.exit_jacobian(loss_fn, jnp.array([1.0, 2.0]))
  >>> grads  # [K, *w.shape]
  Array([[2., 4.],
         [1., 1.]], dtype=float32)
  >>> losses
  Array([5., 3.], dtype=float32)
  """
  grads: Any
  losses: jax.Array
  aux: Any


def _check_losses(losses: Any) -> int:
  if not hasattr(losses, 'shape') or jnp.ndim(losses) != 1:
    raise ValueError(
        'loss_fn must return the per-exit losses as a 1-D array [K] (exit '
        f'order, earliest first); got {getattr(losses, "shape", type(losses))}. '
        'With has_aux=True return (losses, aux).')
  return losses.shape[0]


def exit_jacobian(
    loss_fn: Callable[..., Any],
    params: Any,
    *args: Any,
    has_aux: bool = False,
    chunk_size: Optional[int] = None,
) -> Gradients:
  """Per-exit gradients from one forward pass and K vmapped backward passes.

  Use it for any model whose loss function returns the ``[K]`` exit losses;
  for a model written as stages, :func:`anytime_jax.staged_jacobian` does the
  same work at lower cost.

  Args:
    loss_fn: ``loss_fn(params, *args)`` returning the ``[K]`` per-exit losses,
      or ``(losses, aux)`` when ``has_aux``.
    params: the pytree to differentiate.
    *args: further arguments of ``loss_fn`` (batch, labels, ...), not
      differentiated.
    has_aux: whether ``loss_fn`` returns auxiliary data.
    chunk_size: if set, push at most this many exits' cotangents through the
      backward pass at once (bounds memory at the price of speed).

  Returns:
    :class:`Gradients` ``(grads, losses [K], aux)``: ``grads`` has the structure
    of ``params`` with every leaf ``[K, *leaf.shape]``, row ``k`` the gradient
    of exit ``k``'s loss; ``aux`` is ``loss_fn``'s auxiliary output (``None``
    without ``has_aux``).

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> loss_fn = lambda p, x: jnp.stack([jnp.sum(p * x), jnp.sum((p * x) ** 2)])
  >>> grads, losses, _ = aj.exit_jacobian(loss_fn, jnp.ones(2), jnp.array([1.0, 2.0]))
  >>> grads  # [K=2, 2]: row k is d loss_k / d p
  Array([[1., 2.],
         [2., 8.]], dtype=float32)
  """
  def fn(p):
    return loss_fn(p, *args)

  if has_aux:
    losses, vjp_fn, aux = jax.vjp(fn, params, has_aux=True)
  else:
    losses, vjp_fn = jax.vjp(fn, params)
  num_exits = _check_losses(losses)
  if chunk_size is not None and chunk_size < 1:
    raise ValueError(f'chunk_size must be a positive integer, got {chunk_size}.')
  # Unit cotangents typed like the losses (inside shard_map they vary over its axes).
  cotangents = jnp.eye(num_exits, dtype=losses.dtype) * jnp.ones_like(losses)

  def one_exit(cotangent):
    return vjp_fn(cotangent)[0]

  if chunk_size is None or chunk_size >= num_exits:
    jac = jax.vmap(one_exit)(cotangents)
  else:
    jac = jax.lax.map(one_exit, cotangents, batch_size=chunk_size)
  return Gradients(jac, losses, aux if has_aux else None)
