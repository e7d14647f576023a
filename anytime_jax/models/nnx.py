"""Our networks as Flax NNX modules: each linen stage bridged, so NNX users train them natively."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import bridge

from anytime_jax import models


class AnytimeNNX(nnx.Module):
  """One of our anytime networks as an NNX module: ``model(x, train=False) -> [K, B, C]``.

  Stage k is ``model.stages[k]`` (a ``BridgedStage``), the linen stage of
  the same network wrapped by ``flax.nnx.bridge.ToNNX``: the same
  computation, parameters and invariants (exit k does not depend on later
  stages; tested bit for bit). Like any NNX model with stages it trains
  through :func:`nnx_staged_exit_jacobian` and runs through
  :func:`anytime_jax.iterate_exits`.

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
      if not getattr(stage, 'dropout', 0.0):
        # Drawing no randomness, it needs no RNG state: keeps the model's state arrays only, so
        # code that closes over them inside a trace (jax.grad of a merged copy) stays valid.
        module.to_nnx__rngs = None
      stages.append(BridgedStage(module))
    self.stages = nnx.List(stages)

  @property
  def num_exits(self) -> int:
    return len(self.stages)

  def stage(self, k: int, carry: Any, train: bool = False):
    """Runs stage k: ``(carry, logits [B, C])``; in train mode updates its BatchNorm statistics."""
    return self.stages[k](carry, train=train)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    carry, logits = models.initial_carry(x), []
    for k in range(self.num_exits):
      carry, out = self.stage(k, carry, train)
      logits.append(out)
    return jnp.stack(logits)


class BridgedStage(nnx.Module):
  """One linen stage of ours as an NNX stage: ``stage(carry) -> (carry, logits [B, C])``.

  Follows NNX's modes: after ``model.train()`` it normalizes with batch
  statistics and updates them, after ``model.eval()`` it uses the running
  ones (``train=`` overrides). The first stage also reads the images
  ``[B, H, W, C]`` themselves, so that our models take the input as any NNX
  model's first stage does.
  """

  def __init__(self, module: bridge.ToNNX):
    self.module = module
    self.use_running_average = False

  def __call__(self, carry: Any, train: Optional[bool] = None):
    train = not self.use_running_average if train is None else train
    if not isinstance(carry, dict):
      carry = models.initial_carry(carry)
    return self.module(carry, train=train, mutable=['batch_stats'] if train else False)


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
