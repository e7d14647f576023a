"""What a training step differentiates: the gradient sources :func:`anytime_jax.make_train_step` takes.

A source maps ``(network, variables, x, y, rng)`` to :class:`anytime_jax.Gradients`
in train mode: per-exit gradients (every leaf ``[K, *param.shape]``) for a
combination at the head of the optimizer (:func:`staged_gradients`, the cost
floor; :func:`vmapped_gradients`, the plain ``vmap``), or the ordinary gradient
of the summed losses for a plain optimizer (:func:`summed_gradients`). A source
that can also differentiate a weighted sum of the exit losses (``weighted``)
serves an amortized combination (:func:`anytime_jax.amortize`) between refreshes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from anytime_jax._src.jacobian import Gradients, exit_jacobian
from anytime_jax._src.linen import dropout_key_named, linen_num_stages, staged_exit_jacobian
from anytime_jax._src.losses import Distillation, distillation_loss, exit_cross_entropy

REDUCTIONS = ('sum', 'mean')
GradientFn = Callable[[nn.Module, Any, jax.Array, jax.Array, Optional[jax.Array]], Gradients]
"""``fn(network, variables, x, y, rng) -> Gradients`` (train mode; ``rng`` the dropout key or None)."""
WeightedFn = Callable[[nn.Module, Any, jax.Array, jax.Array, jax.Array, Optional[jax.Array]],
                      Gradients]
"""``fn(network, variables, x, y, weights [K], rng) -> Gradients`` of ``sum_k w_k L_k``."""


class GradientSource(NamedTuple):
  """How a training step differentiates the exit losses.

  Attributes:
    name: what it is, for error messages.
    per_exit: whether ``gradients`` returns per-exit gradients ``[K, ...]`` (for
      a combination) or one gradient (for a plain optimizer).
    gradients: the step's gradients (:data:`GradientFn`).
    weighted: the gradient of a weighted sum of the same exit losses, one
      backward pass (:data:`WeightedFn`), or None where the source's losses are
      not a weighted sum of the plain exit losses (distillation).
  """
  name: str
  per_exit: bool
  gradients: GradientFn
  weighted: Optional[WeightedFn]


def staged_gradients(*, distillation: Optional[Distillation] = None) -> GradientSource:
  """Per-exit gradients by the staged engine (:func:`anytime_jax.staged_exit_jacobian`).

  Args:
    distillation: distil the last exit into the earlier ones
      (:class:`anytime_jax.Distillation`): each exit's loss gains ``beta tau^2
      KL`` to the last exit's softened prediction, from one more forward pass in
      train mode (its BatchNorm statistics discarded). None: plain exit losses.

  Returns:
    A :class:`GradientSource` with per-exit gradients, the default of
    :func:`anytime_jax.make_train_step`.
  """
  if distillation is None:
    return GradientSource('staged_gradients()', True, _staged, weighted_loss_gradient)
  return GradientSource(f'staged_gradients(distillation={distillation})', True,
                        functools.partial(_distilled, distillation=distillation), None)


def vmapped_gradients() -> GradientSource:
  """Per-exit gradients by :func:`anytime_jax.exit_jacobian`: a ``vmap`` over the exits.

  Every exit is pushed through every stage (the staged engine's reference);
  for comparisons and models the staged engine cannot split.

  Returns:
    A :class:`GradientSource` with per-exit gradients.
  """
  return GradientSource('vmapped_gradients()', True, vmapped_exit_jacobian,
                        weighted_loss_gradient)


def summed_gradients(*, reduction: Literal['sum', 'mean'] = 'sum') -> GradientSource:
  """The ordinary gradient of the summed (or averaged) exit losses, for a plain optimizer.

  Args:
    reduction: ``'sum'`` or ``'mean'`` of the exit losses.

  Returns:
    A :class:`GradientSource` with one gradient per parameter (``optax.sgd``
    and the like take it as it is).
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f'reduction must be one of {REDUCTIONS}, got {reduction!r}.')
  return GradientSource(f'summed_gradients(reduction={reduction!r})', False,
                        functools.partial(_summed, reduction=reduction), None)


def _staged(network, variables, x, y, rng):
  return staged_exit_jacobian(network, variables, x, y, train=True, rng=rng)


def _summed(network, variables, x, y, rng, *, reduction):
  return summed_loss_gradient(network, variables, x, y, reduction=reduction, rng=rng)


def _distilled(network, variables, x, y, rng, *, distillation):
  rngs = None if rng is None else {'dropout': jax.random.fold_in(rng, -1)}
  with dropout_key_named('pass make_train_step(..., dropout_key=key)'):
    logits, _ = network.apply(variables, x, train=True, mutable=['batch_stats'], rngs=rngs)
  loss_fn = functools.partial(distillation_loss, weight=distillation.weight,
                              temperature=distillation.temperature)
  return staged_exit_jacobian(network, variables, x, (y, logits[-1]), train=True,
                              loss_fn=loss_fn, rng=rng)


def summed_loss_gradient(network: nn.Module, variables: Any, x: jax.Array, y: jax.Array,
                         *, reduction: Literal['sum', 'mean'] = 'sum',
                         rng: Optional[jax.Array] = None) -> Gradients:
  """The ordinary gradient of the summed (or averaged) exit losses, in train mode.

  Returns :class:`anytime_jax.Gradients` ``(grads, losses [K], aux)`` with
  plain ``[*leaf.shape]`` gradients and ``aux`` the updated non-parameter
  collections: the summed-loss counterpart of
  :func:`anytime_jax.staged_exit_jacobian`. ``rng`` is the dropout key.

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> variables = aj.models.init_variables(network, jax.random.key(0), x)
  >>> summed = jax.jit(aj.summed_loss_gradient, static_argnums=0)  # the network is static
  >>> grads, loss, aux = summed(network, variables, x, y)
  >>> staged, losses, _ = jax.jit(aj.staged_exit_jacobian, static_argnums=0)(
  ...     network, variables, x, y)
  >>> bool(jnp.allclose(loss, losses))  # the same [K] exit losses
  True
  >>> close = lambda g, s: jnp.allclose(g, s.sum(0), rtol=1e-4, atol=1e-6)  # g = the sum of rows
  >>> all(jax.tree.leaves(jax.tree.map(close, grads, staged)))
  True
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f'reduction must be one of {REDUCTIONS}, got {reduction!r}.')

  num_exits = linen_num_stages(network, variables)
  weights = jnp.full((num_exits,), 1.0 if reduction == 'sum' else 1.0 / num_exits)
  return weighted_loss_gradient(network, variables, x, y, weights, rng)


def weighted_loss_gradient(network: nn.Module, variables: Any, x: jax.Array, y: jax.Array,
                           weights: jax.Array, rng: Optional[jax.Array] = None) -> Gradients:
  """The gradient of ``sum_k weights[k] L_k``, in train mode: one backward pass.

  With a ``'global'`` combination's weights it is the combination's update
  (what :func:`anytime_jax.amortize` trains with between refreshes).

  Returns :class:`anytime_jax.Gradients` ``(grads, losses [K], aux)`` as
  :func:`summed_loss_gradient` does; ``weights`` ``[K]`` are not differentiated.
  """
  weights = jax.lax.stop_gradient(weights)

  def loss(params):
    losses, rest = _train_losses(network, params, variables, x, y, rng)
    return jnp.sum(weights.astype(losses.dtype) * losses), (losses, rest)

  grads, (losses, rest) = jax.grad(loss, has_aux=True)(variables['params'])
  return Gradients(grads, losses, rest)


def _train_losses(network: nn.Module, params: Any, variables: Any, x: jax.Array,
                  y: jax.Array, rng: Optional[jax.Array] = None) -> tuple[jax.Array, Any]:
  """``[K]`` exit losses in train mode and the updated non-parameter collections."""
  rest = {c: t for c, t in variables.items() if c != 'params'}
  rngs = None if rng is None else {'dropout': rng}
  with dropout_key_named('pass make_train_step(..., dropout_key=key)'):
    logits, new = network.apply({'params': params, **rest}, x, train=True, mutable=list(rest),
                                rngs=rngs)
  return exit_cross_entropy(logits, y), {**rest, **new}


def vmapped_exit_jacobian(network: nn.Module, variables: Any, x: jax.Array,
                          y: jax.Array, rng: Optional[jax.Array] = None) -> Gradients:
  """Per-exit gradients by :func:`anytime_jax.exit_jacobian` (the plain vmap path).

  Same contract as :func:`anytime_jax.staged_exit_jacobian` in train mode;
  ``rng`` is the whole network's dropout key.
  """
  return exit_jacobian(lambda p: _train_losses(network, p, variables, x, y, rng),
                       variables['params'], has_aux=True)
