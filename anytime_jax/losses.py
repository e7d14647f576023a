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

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> logits = jnp.array([[[2.0, 0.0], [0.0, 0.5]], [[3.0, 0.0], [0.0, 4.0]]])  # [K=2, N=2, C=2]
  >>> np.asarray(aj.exit_cross_entropy(logits, jnp.array([0, 1]))).round(4)  # [K]
  array([0.3005, 0.0334], dtype=float32)
  """
  if logits.ndim != 3 or labels.shape != logits.shape[1:2]:
    raise ValueError(f'exit_cross_entropy expects logits [K, B, C] and labels [B]; '
                     f'got {logits.shape} and {labels.shape}.')
  return jax.vmap(cross_entropy, in_axes=(0, None))(logits, labels)
