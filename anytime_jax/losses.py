"""Per-exit losses on stacked exit logits."""

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of one exit: logits ``[B, C]``, labels ``[B]``, in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32), labels).mean()


def exit_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of each exit.

  Args:
    logits: ``[K, B, C]`` stacked exit logits (any float dtype).
    labels: ``[B]`` integer class labels.

  Returns:
    ``[K]`` float32 losses, exit order.
  """
  if logits.ndim != 3 or labels.shape != logits.shape[1:2]:
    raise ValueError(f'exit_cross_entropy expects logits [K, B, C] and labels [B]; '
                     f'got {logits.shape} and {labels.shape}.')
  return jax.vmap(cross_entropy, in_axes=(0, None))(logits, labels)
