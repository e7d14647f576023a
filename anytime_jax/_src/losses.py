"""Per-exit losses on stacked exit logits, and distillation between exits."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of one exit: logits ``[B, C]``, labels ``[B]``, in float32."""
  if jnp.ndim(logits) != 2 or jnp.shape(labels) != jnp.shape(logits)[:1]:
    raise ValueError(f'cross_entropy expects one exit\'s logits [B, C] and integer labels [B]; '
                     f'got logits {jnp.shape(logits)} and labels {jnp.shape(labels)}. A stage '
                     'returns its exit\'s logits [B, C].')
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
                     f'got {logits.shape} and {labels.shape}. One exit\'s logits [B, C]: '
                     'pass logits[None] (then take [0]).')
  return jax.vmap(cross_entropy, in_axes=(0, None))(logits, labels)


class Distillation(NamedTuple):
  """Distillation from the last exit into the earlier ones (``staged_gradients(distillation=)``).

  Attributes:
    weight: beta, the weight of the distillation term.
    temperature: tau, the softening temperature of teacher and student.

  Example:

  >>> import optax, anytime_jax as aj
  >>> kd = aj.Distillation(weight=0.5, temperature=4.0)
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> tx = optax.chain(aj.sum_exits(), optax.sgd(0.1))
  >>> step = aj.make_train_step(network, tx, gradients=aj.staged_gradients(distillation=kd))
  >>> kd
  Distillation(weight=0.5, temperature=4.0)
  """
  weight: float = 0.5
  temperature: float = 4.0


def distillation_loss(logits: jax.Array, target: tuple[jax.Array, jax.Array],
                      weight: float, temperature: float) -> jax.Array:
  """One exit's loss with distillation from a teacher: ``CE + beta tau^2 KL(t^tau || s^tau)``.

  Phuong & Lampert (*Distillation-Based Training for Multi-Exit Architectures*,
  ICCV 2019) distil the last exit into the earlier ones; the form is Hinton's
  (``t^tau = softmax(teacher / tau)``, the ``tau^2`` keeping the term's gradient
  scale as ``tau`` varies). The teacher gets no gradient. For the last exit
  itself the term and its gradient are zero. (Li et al., ICCV 2019, distil an
  ensemble of the later exits instead; not implemented.)

  Args:
    logits: ``[B, C]`` the exit's logits (the student).
    target: ``(labels [B], teacher_logits [B, C])``.
    weight: beta.
    temperature: tau.

  Returns:
    The scalar loss, float32.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> student, teacher = jnp.array([[1.0, 0.0]]), jnp.array([[0.0, 1.0]])
  >>> loss = aj.distillation_loss(student, (jnp.array([0]), teacher), weight=0.5,
  ...                             temperature=1.0)
  >>> round(float(loss), 4)  # CE 0.3133 + 0.5 * KL 0.4621
  0.5443
  """
  labels, teacher = target
  teacher = jax.lax.stop_gradient(teacher.astype(jnp.float32))
  student = logits.astype(jnp.float32)
  t = jax.nn.log_softmax(teacher / temperature)
  s = jax.nn.log_softmax(student / temperature)
  kl = jnp.sum(jnp.exp(t) * (t - s), axis=-1).mean()
  return cross_entropy(student, labels) + weight * temperature ** 2 * kl
