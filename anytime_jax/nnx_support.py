"""Flax NNX: our networks as NNX modules, and NNX stages for the staged engine.

NNX is what Flax recommends for new code. Its modules reduce to the engine's
pure stages through ``nnx.split``/``nnx.merge``: stage k's ``nnx.Param`` s are
what is differentiated, everything else (BatchNorm statistics) its state.
Per-exit gradients come back as an ``nnx.State`` shaped like
``nnx.state(model, nnx.Param)`` with an exit axis in front of every leaf, which
``nnx.Optimizer(model, aj.osgd(...), wrt=nnx.Param).update(model, grads)``
takes as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import bridge

from anytime_jax import models
from anytime_jax.losses import cross_entropy
from anytime_jax.jacobian import Gradients
from anytime_jax.staged import StageFn, staged_jacobian


class AnytimeNNX(nnx.Module):
  """One of our anytime networks as an NNX module: ``model(x, train=False) -> [K, B, C]``.

  Stage k is ``model.stages[k]``, the linen stage of the same network wrapped
  by ``flax.nnx.bridge.ToNNX``: the same computation, parameters and
  invariants (exit k does not depend on later stages; tested bit for bit).

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> from flax import nnx
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> model = aj.create_nnx('branched', num_classes=3, num_exits=2, width=2, num_levels=1,
  ...                      example=x, rngs=nnx.Rngs(0))
  >>> carry, logits = model.stage(0, aj.models.initial_carry(x))  # stage 1 alone
  >>> logits.shape
  (4, 3)
  """

  def __init__(self, network: models.AnytimeNetwork, example: jax.Array, *, rngs: nnx.Rngs):
    carry = models.initial_carry(example)
    stages = []
    for stage in network.stages:
      module = bridge.ToNNX(stage, rngs=rngs)
      bridge.lazy_init(module, carry)
      carry, _ = module(carry)
      module.to_nnx__rngs = None  # our stages draw no randomness once initialized
      stages.append(module)
    self.stages = nnx.List(stages)

  @property
  def num_exits(self) -> int:
    return len(self.stages)

  def stage(self, k: int, carry: Any, train: bool = False):
    """Runs stage k: ``(carry, logits [B, C])``; in train mode updates its BatchNorm statistics."""
    return self.stages[k](carry, train=train, mutable=['batch_stats'] if train else False)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    carry, logits = models.initial_carry(x), []
    for k in range(self.num_exits):
      carry, out = self.stage(k, carry, train)
      logits.append(out)
    return jnp.stack(logits)


def create_nnx(name: str, *, num_classes: int, example: jax.Array, rngs: nnx.Rngs,
               **options: Any) -> AnytimeNNX:
  """``anytime_jax.models.create(name, ...)`` as an NNX module, initialized on ``example``.

  Initialized as one compiled program with the non-partitionable threefry (as
  :func:`anytime_jax.models.init_variables`): eagerly, every parameter shape
  compiles its own random program, tens of seconds on CPU for these networks.

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> from flax import nnx
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> model = aj.create_nnx('branched', num_classes=3, num_exits=2, width=2, num_levels=1,
  ...                      example=x, rngs=nnx.Rngs(0))
  >>> model(x).shape  # [K, B, C]
  (2, 4, 3)
  """
  network = models.create(name, num_classes=num_classes, **options)
  with jax.threefry_partitionable(False):
    return nnx.jit(lambda e, r: AnytimeNNX(network, e, rngs=r))(example, rngs)


def nnx_stages(modules: Sequence[nnx.Module],
               call: Callable[[nnx.Module, Any], tuple[Any, jax.Array]] = lambda m, c: m(c)
               ) -> tuple[list[StageFn], list[Any], list[Any]]:
  """NNX stage modules as engine stages: ``(stages, params, states)`` for :func:`staged_jacobian`.

  Args:
    modules: stage k maps a carry to ``(carry, logits_k)`` through ``call``.
    call: ``call(module, carry) -> (carry, logits)``; default ``module(carry)``.

  Returns:
    Stage functions, each stage's ``nnx.Param`` state (differentiated) and the
    rest of its state (returned updated by the engine: write it back with
    ``nnx.update(module, state)``). Randomness (``nnx.Dropout``) comes from
    the ``nnx.Rngs`` inside that state, so the engine's ``rng=`` is ignored.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> from flax import nnx
  >>> blocks = [nnx.Linear(3, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 3, rngs=nnx.Rngs(1))]
  >>> call = lambda m, h: (jnp.tanh(m(h)), m(h))  # (carry, logits)
  >>> stages, params, states = aj.nnx_stages(blocks, call)
  >>> loss = lambda k, logits: aj.exit_cross_entropy(logits[None], jnp.array([0, 2]))[0]
  >>> grads, losses, _ = aj.staged_jacobian(stages, params, jnp.ones((2, 3)), loss, states)
  >>> grads[1]['kernel'].shape  # [K, 3, 3]
  (2, 3, 3)
  """
  stages, params, states = [], [], []
  for module in modules:
    graphdef, stage_params, rest = nnx.split(module, nnx.Param, ...)  # type: ignore[misc]

    def stage(p, state, carry, rng=None, graphdef=graphdef):
      del rng  # NNX modules draw randomness from the nnx.Rngs in their own state
      merged = nnx.merge(graphdef, p, state)
      carry, logits = call(merged, carry)
      return carry, logits, nnx.state(merged, nnx.Not(nnx.Param))

    stages.append(stage)
    params.append(stage_params)
    states.append(rest)
  return stages, params, states


def nnx_staged_exit_jacobian(
    model: AnytimeNNX,
    x: jax.Array,
    y: jax.Array,
    *,
    train: bool = True,
    loss_fn: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None,
) -> Gradients:
  """Per-exit gradients of an :class:`AnytimeNNX` by the staged engine.

  Updates the model's BatchNorm statistics in train mode (once per step, in
  place, as NNX does) and returns :class:`anytime_jax.Gradients` ``(grads,
  losses [K], aux)``: ``grads`` is shaped like ``nnx.state(model, nnx.Param)``
  with every leaf ``[K, *leaf.shape]``, ready for ``nnx.Optimizer.update``;
  ``aux`` is the list of the stages' updated non-parameter states (already
  written back into the model).

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> from flax import nnx
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> model = aj.create_nnx('branched', num_classes=3, num_exits=2, width=2, num_levels=1,
  ...                      example=x, rngs=nnx.Rngs(0))
  >>> optimizer = nnx.Optimizer(model, aj.osgd(0.1), wrt=nnx.Param)
  >>> grads, losses, _ = nnx.jit(aj.nnx_staged_exit_jacobian)(model, x, y)  # [K, *shape]
  >>> _ = optimizer.update(model, grads)  # OSGD, then SGD with momentum
  >>> losses.shape
  (2,)
  """
  loss_fn = cross_entropy if loss_fn is None else loss_fn
  stages, params, states = nnx_stages(
      list(model.stages), call=lambda m, c: m(c, train=train,
                                              mutable=['batch_stats'] if train else False))
  jac, losses, new_states = staged_jacobian(stages, params, models.initial_carry(x),
                                            lambda k, logits: loss_fn(logits, y), states)
  for module, state in zip(model.stages, new_states):
    nnx.update(module, state)
  grads = nnx.state(model, nnx.Param)
  for k, stage_jac in enumerate(jac):
    grads['stages'][k] = stage_jac
  return Gradients(grads, losses, new_states)
