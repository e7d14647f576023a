"""Per-exit gradients: the Jacobian of the K exit losses with respect to params."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp


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
) -> tuple[Any, Any]:
  """Per-exit gradients from one forward pass and K vmapped backward passes.

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
    ``(jac, losses)`` or ``(jac, (losses, aux))``: ``jac`` has the structure of
    ``params`` with every leaf ``[K, *leaf.shape]``, row ``k`` the gradient of
    exit ``k``'s loss.
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
  return jac, ((losses, aux) if has_aux else losses)
