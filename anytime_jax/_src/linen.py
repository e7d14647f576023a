"""Linen front end of the staged engine: any linen module that holds its stages in order.

A linen anytime network keeps its stages in a ``stages`` attribute (a field, or
defined in ``setup``), each ``stage(carry, train=...) -> (carry, logits [B, C])``.
The first stage reads ``x``; a network whose first stage reads something built
from ``x`` defines ``first_carry(x)`` (a static method: our networks' carry dict).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Optional

import flax.errors
import flax.linen as nn
import jax

from anytime_jax._src.jacobian import Gradients
from anytime_jax._src.losses import cross_entropy
from anytime_jax._src.staged import StageOnLeaves, stage_output, staged_walk


@contextlib.contextmanager
def dropout_key_named(fix: str):
  """Re-raises flax's missing-PRNG error with the argument that supplies the key."""
  try:
    yield
  except flax.errors.InvalidRngError as e:
    raise ValueError(f'the network draws randomness (dropout) but got no key: {fix}. '
                     f'({e})') from e


def first_carry(network: nn.Module, x: Any) -> Any:
  """What stage 0 of a linen network reads: ``network.first_carry(x)`` if it defines one, else ``x``."""
  build = getattr(type(network), 'first_carry', None)
  return x if build is None else build(x)


def linen_num_stages(network: nn.Module, variables: Any) -> int:
  """How many stages a linen network holds in ``stages`` (a field, or defined in ``setup``)."""
  stages = getattr(network, 'stages', None)
  if stages is None and variables:
    stages = getattr(network.bind(variables), 'stages', None)
  if stages is None or not len(stages):
    raise ValueError(f'{type(network).__name__} has no stages: a linen anytime network holds its '
                     'stages in order in a `stages` attribute, each called stage(carry, '
                     'train=...) -> (carry, logits).')
  return len(stages)


def linen_model_stages(network: nn.Module, variables: Any, *, train: bool,
                       rng: Optional[jax.Array] = None):
  """Any linen module with stages as functions of its parameter leaves, for the staged engine.

  Stage k is ``network.stages[k](carry, train=train) -> (carry, logits)``,
  run through ``network.apply`` with all of ``variables``, so a submodule
  several stages call (a head defined in ``setup`` and handed to each stage)
  is one parameter. Returns ``(stage_fns, leaves, state, rebuild)`` as
  the NNX front end's ``nnx_model_stages`` does: ``state`` holds the
  other collections (BatchNorm statistics), threaded through the stages and
  updated in train mode; with ``rng`` stage k draws dropout from
  ``{'dropout': fold_in(rng, k)}``.
  """
  if 'params' not in variables:
    raise ValueError("variables lack 'params'; pass the variables returned by network.init.")
  num_stages = linen_num_stages(network, variables)
  leaves, params_def = jax.tree.flatten(variables['params'])
  state = {c: t for c, t in variables.items() if c != 'params'}

  def stage_fn(k: int) -> StageOnLeaves:
    def run(full, state_now, carry):
      v = {'params': jax.tree.unflatten(params_def, full), **state_now}
      rngs = None if rng is None else {'dropout': jax.random.fold_in(rng, k)}

      def method(module, c):
        return stage_output(module.stages[k](c, train=train), f'stage {k}', 2,
                            'a linen stage maps a carry to (carry, logits [B, C])')

      with dropout_key_named('pass rng=key (in a training step: dropout_key=)'):
        if train and state_now:
          (carry, logits), updates = network.apply(v, carry, method=method, rngs=rngs,
                                                   mutable=list(state_now))
          return carry, logits, {**state_now, **updates}
        carry, logits = network.apply(v, carry, method=method, rngs=rngs)
        return carry, logits, state_now
    return run

  def rebuild(jac: list[jax.Array]) -> Any:
    return jax.tree.unflatten(params_def, jac)

  return [stage_fn(k) for k in range(num_stages)], leaves, state, rebuild


def staged_exit_jacobian(
    network: nn.Module,
    variables: Any,
    x: Any,
    y: Any,
    *,
    train: bool = True,
    loss_fn: Optional[Callable[[jax.Array, Any], jax.Array]] = None,
    rng: Optional[jax.Array] = None,
    vectorize: bool = False,
) -> Gradients:
  """Per-exit gradients of a linen anytime network by the staged engine.

  Our networks (:func:`anytime_jax.models.create`) and any linen module that
  holds its stages in order in ``stages`` (each ``stage(carry, train=...) ->
  (carry, logits [B, C])``, the first reading ``x``). Parameters several
  stages use (a submodule defined in ``setup`` and called by each) are one
  parameter, and each exit's gradient on them sums all their uses, as
  :func:`anytime_jax.exit_jacobian` of the whole model gives it.

  Args:
    network: the linen module.
    variables: its variables (``params`` and, for BatchNorm, ``batch_stats``).
    x: what the first stage reads (our networks: images ``[B, H, W, C]``).
    y: labels ``[B]`` (anything ``loss_fn`` accepts).
    train: training mode: BatchNorm normalizes with batch statistics and the
      updated statistics are returned (once per step, as in ordinary training).
    loss_fn: ``loss_fn(logits [B, C], y) -> scalar``, the loss of one exit;
      default mean softmax cross-entropy with integer labels.
    rng: a PRNG key for dropout: stage k gets ``{'dropout': fold_in(rng, k)}``.
    vectorize: see :func:`staged_jacobian`.

  Returns:
    :class:`anytime_jax.Gradients` ``(grads, losses, aux)``: ``grads`` has the
    structure of ``variables['params']`` with every leaf ``[K, *leaf.shape]``
    (row k: the gradient of exit k's loss; exactly zero for parameters only
    later stages use); ``losses`` is ``[K]``; ``aux`` the variables' other
    collections (``{'batch_stats': ...}`` for BatchNorm), updated in train mode.

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> variables = aj.models.init_variables(network, jax.random.key(0), x)
  >>> grads, losses, aux = aj.staged_exit_jacobian(network, variables, x, y)
  >>> losses.shape  # [K]
  (2,)
  >>> jax.tree.leaves(grads['stages_0'])[0].shape[0]  # every leaf [K, *param.shape]
  2
  >>> sorted(aux)  # BatchNorm statistics updated by the train-mode pass
  ['batch_stats']
  """
  loss_fn = cross_entropy if loss_fn is None else loss_fn
  stage_fns, leaves, state, rebuild = linen_model_stages(network, variables, train=train, rng=rng)
  jac, losses, new_state = staged_walk(stage_fns, leaves, first_carry(network, x),
                                       lambda k, logits: loss_fn(logits, y), state,
                                       vectorize=vectorize)
  return Gradients(rebuild(jac), losses, new_state)
