"""The stage abstraction: every anytime network is a sequence of stages.

Stage k maps a carry (the activations later stages read) to a new carry and
exit k's logits. The carry is a dict ``{'out': {block: [B, H, W, C]},
'hidden': {block: [B, H, W, C]}}``; the first stage gets
``{'out': {'image': x}, 'hidden': {}}`` (see :func:`initial_carry`).

Running the stages one at a time serves anytime inference (stop after any
exit, nothing recomputed), per-exit FLOPs, and the staged gradient engine.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Optional, cast

import flax.linen as nn
import jax
import jax.numpy as jnp

from anytime_jax.models import conv as conv_lib
from anytime_jax.models.plans import IMAGE, Op, StagePlan

Carry = dict[str, dict[str, jax.Array]]


def initial_carry(x: jax.Array) -> Carry:
  """The carry the first stage reads: the input images ``[B, H, W, C]``."""
  return {'out': {IMAGE: x}, 'hidden': {}}


class ResidualPart(nn.Module):
  """A basic residual block, or the channel group that widens one.

  ``relu(norm(conv(relu(norm(sum_j conv(x_j)))))) + shortcut)`` where the new
  channels read every channel of the inputs ``x_j`` and of the block's hidden
  layer, and the block's old channels (``hidden_old``) are never touched.
  """
  channels: int
  strides: tuple[int, ...]
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  identity: tuple[bool, ...]

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array], hidden_old, out_old_channels: int,
               train: bool):
    """Args: inputs ``[B, H_j, W_j, C_j]``; hidden_old ``[B, H, W, C_old]`` or None.

    Returns ``(hidden [B, H, W, C_old + channels], out [B, H, W, channels])``.
    """
    h = sum(self.conv(self.channels, (3, 3), strides=s)(x)
            for x, s in zip(inputs, self.strides))
    h = nn.relu(self.norm(use_running_average=not train)(h))
    if hidden_old is not None:
      h = jnp.concatenate([hidden_old, h], axis=-1)
    y = self.norm(use_running_average=not train, scale_init=nn.initializers.zeros)(
        self.conv(self.channels, (3, 3))(h))
    shortcut: Any = 0.0
    for x, s, same in zip(inputs, self.strides, self.identity):
      if same:
        shortcut = shortcut + x[..., out_old_channels:]
      else:
        shortcut = shortcut + self.norm(use_running_average=not train)(
            self.conv(self.channels, (1, 1), strides=s)(x))
    return h, nn.relu(y + shortcut)


def layer_constructors(dtype: Any, conv_weight_gradient: str):
  """Returns ``(conv, norm)``: the convolution and batch norm every stage builds from.

  Bias-free ``'SAME'`` convolutions whose weight gradient follows
  ``conv_weight_gradient`` and batch norm with momentum 0.9, both computing in
  ``dtype``; keyword arguments at the call override these.
  """
  conv_fn = functools.partial(conv_lib.conv_general_dilated, weight_gradient=conv_weight_gradient)
  conv = functools.partial(nn.Conv, use_bias=False, dtype=dtype, padding='SAME',
                           conv_general_dilated=conv_fn)
  norm = functools.partial(nn.BatchNorm, momentum=0.9, epsilon=1e-5, dtype=dtype)
  return conv, norm


class Stage(nn.Module):
  """Runs one :class:`StagePlan`: its block parts, then its exit head.

  ``conv_weight_gradient`` selects how convolutions compute their weight
  gradient (see :func:`anytime_jax.models.conv.conv_general_dilated`); the forward
  pass and every result are the same either way, up to float32 rounding.
  """
  plan: StagePlan
  num_classes: int
  dtype: Any = jnp.float32
  conv_weight_gradient: str = 'xla'

  @nn.compact
  def __call__(self, carry: Carry, train: bool = False):
    """Returns ``(carry, logits [B, num_classes])``."""
    conv, norm = layer_constructors(self.dtype, self.conv_weight_gradient)
    outs, hidden = dict(carry['out']), dict(carry['hidden'])
    for op in self.plan.ops:
      xs = [outs[name] for name in op.inputs]
      if op.stem:
        y = nn.relu(norm(use_running_average=not train)(conv(op.channels, (7, 7), strides=2,
                                                             name=f'{op.block}_conv')(xs[0])))
        outs[op.block] = nn.max_pool(y, (3, 3), strides=(2, 2), padding='SAME')
        continue
      old = outs[op.block].shape[-1] if op.widen else 0
      identity = tuple(name != IMAGE and s == 1 and x.shape[-1] == old + op.channels
                       for name, x, s in zip(op.inputs, xs, op.strides))
      h, out = ResidualPart(op.channels, op.strides, conv, norm, identity,
                            name=op.block)(xs, hidden.get(op.block) if op.widen else None,
                                           old, train)
      hidden[op.block] = h
      outs[op.block] = jnp.concatenate([outs[op.block], out], -1) if op.widen else out
    features = jnp.mean(outs[self.plan.exit_block], axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(features)
    new_carry = {'out': {k: outs[k] for k in self.plan.keep_outputs},
                 'hidden': {k: hidden[k] for k in self.plan.keep_hidden}}
    return new_carry, logits.astype(jnp.float32)


class AnytimeNetwork(nn.Module):
  """K stages in order; ``__call__`` returns the stacked exit logits ``[K, B, C]``.

  A stage is any module called as ``stage(carry, train=...)`` that returns
  ``(carry, logits [B, C])``: :class:`Stage`, or
  :class:`anytime_jax.models.msdnet.MSDStage`. Stage k's variables live under
  ``'stages_k'`` in every collection.
  """
  stages: tuple[nn.Module, ...]
  first_carry = staticmethod(initial_carry)  # what stage 0 reads: the linen front end asks

  @property
  def num_exits(self) -> int:
    return len(self.stages)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    carry = initial_carry(x)
    logits = []
    for stage in self.stages:
      carry, out = stage(carry, train=train)
      logits.append(out)
    return jnp.stack(logits)


def init_variables(network: nn.Module, rng: jax.Array, x: jax.Array) -> Any:
  """``network.init(rng, x)`` compiled as one program.

  Uses the non-partitionable threefry PRNG, which XLA compiles several times
  faster on CPU than the partitionable default (seconds instead of tens of
  seconds for these networks); the values are fixed by ``rng`` either way.
  """
  with jax.threefry_partitionable(False):
    return jax.jit(network.init)(rng, x)


def stage_variables(variables: Any, k: int) -> dict[str, Any]:
  """Stage k's slice of the network's variables, in every collection."""
  name = f'stages_{k}'
  return {col: tree[name] for col, tree in variables.items() if name in tree}


def apply_stage(network: AnytimeNetwork, variables: Any, k: int, carry: Carry,
                train: bool = False, rngs: Optional[Any] = None
                ) -> tuple[Carry, jax.Array, dict[str, Any]]:
  """Runs stage k alone with its own variables.

  Args:
    network: the anytime network.
    variables: stage k's variables (from :func:`stage_variables`).
    k: stage index.
    carry: what stage k-1 handed on (or :func:`initial_carry`).
    train: training mode; BatchNorm uses and updates batch statistics.
    rngs: PRNG keys for ``Module.apply`` (e.g. ``{'dropout': key}``).

  Returns:
    ``(carry, logits [B, C], state)``: ``state`` holds every collection of
    ``variables`` other than ``params``, updated in train mode (BatchNorm
    statistics and any other mutable collection), unchanged otherwise.
  """
  stage = network.stages[k]
  state = {col: tree for col, tree in variables.items() if col != 'params'}
  if train and state:
    (carry, logits), updates = cast(
        tuple[tuple[Carry, jax.Array], dict[str, Any]],
        stage.apply(variables, carry, train=True, rngs=rngs, mutable=list(state)))
    return carry, logits, {**state, **updates}
  carry, logits = cast(tuple[Carry, jax.Array],
                       stage.apply(variables, carry, train=train, rngs=rngs))
  return carry, logits, state
