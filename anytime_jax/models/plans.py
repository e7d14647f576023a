"""Architectures as plans: which residual blocks each stage creates or widens.

Every anytime network here is a sequence of K stages over a growing set of
residual blocks. A stage runs a list of :class:`Op` s in order; an op either
*creates* a block (all its channels) or *widens* an existing one by a new
channel group that reads every channel of the block's inputs, while the old
channels never read the new ones. Exit k reads one block's output after stage k.
Plans are plain Python data, fixed at construction, so one stage module (see
:mod:`anytime_jax.models.network`) serves every architecture:

* ``branched``: each stage appends blocks to one trunk.
* ``nested_width``: stage 1 is a small base network; every later stage widens
  every block by as many channels as it has (the width doubles).
* ``nested_depth`` (interlaced): every later stage inserts a new block after
  each existing block, in run order. The new block after block i reads block
  i's output and the previous new block's output. The block count doubles and
  the earlier network's activations are reused unchanged.
* ``nested_both``: each stage first widens every block, then inserts new
  full-width blocks as in ``nested_depth``.
* ``independent``: stage k is a separate network (no reuse), the non-anytime
  reference; it grows like one of the nested families.

With ``stem=True`` (ImageNet-sized inputs, see :func:`input_options`) the first
stage starts with a stem, as ResNets do: a 7x7 convolution of stride 2 and a
3x3 max-pool of stride 2, so the blocks start at a quarter of the resolution
(56x56 for 224x224 images). Every network of ``independent`` has its own stem.
"""

from __future__ import annotations

import dataclasses

IMAGE = 'image'


@dataclasses.dataclass(frozen=True)
class Op:
  """One residual block part computed by a stage.

  Attributes:
    block: the block's name, unique in the network.
    inputs: names of the blocks (or ``IMAGE``) whose outputs are summed into it.
    strides: spatial stride from each input's resolution to the block's.
    channels: output channels this op adds.
    widen: False creates the block; True adds a channel group to it.
    stem: the op is a stem (7x7 stride-2 convolution, 3x3 stride-2 max-pool), not
      a residual block.
  """
  block: str
  inputs: tuple[str, ...]
  strides: tuple[int, ...]
  channels: int
  widen: bool = False
  stem: bool = False


@dataclasses.dataclass(frozen=True)
class StagePlan:
  """What one stage runs and what it hands on.

  Attributes:
    ops: the block parts in run order.
    exit_block: the block whose full output feeds this stage's exit head.
    keep_outputs: blocks (or ``IMAGE``) whose outputs later stages read.
    keep_hidden: blocks whose inner activations later stages widen.
  """
  ops: tuple[Op, ...]
  exit_block: str
  keep_outputs: tuple[str, ...] = ()
  keep_hidden: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class _Block:
  name: str
  level: int          # resolution: input size / 2**level
  base_channels: int  # channels in network 1; width-nesting multiplies them


def _levels(num_levels: int, blocks_per_level: int) -> list[int]:
  return [level for level in range(num_levels) for _ in range(blocks_per_level)]


def input_options(image_shape: tuple[int, ...]) -> dict:
  """``models.create`` options for images of ``image_shape`` ``(H, W, C)``.

  From 128 pixels on a side (ImageNet's 224x224): a stem and four resolution
  levels; smaller images (28x28, 32x32, 64x64): no stem, three levels.

  >>> input_options((224, 224, 3))
  {'stem': True, 'num_levels': 4}
  >>> input_options((32, 32, 3))
  {}
  """
  return {'stem': True, 'num_levels': 4} if min(image_shape[:2]) >= 128 else {}


def _stem_ops(stem: bool, name: str, width: int) -> list[Op]:
  return [Op(name, (IMAGE,), (4,), width, stem=True)] if stem else []


def _chain_ops(blocks, widths, first_input=IMAGE, first_level=0):
  """Ops creating ``blocks`` as a chain: each reads the previous one."""
  ops, prev, prev_level = [], first_input, first_level
  for block, channels in zip(blocks, widths):
    ops.append(Op(block.name, (prev,), (2 ** (block.level - prev_level),), channels))
    prev, prev_level = block.name, block.level
  return ops


def _finish(stage_ops: list[list[Op]], exits: list[str]) -> tuple[StagePlan, ...]:
  """Adds to each stage the activations that later stages need."""
  plans, existing = [], {IMAGE}
  for k, (ops, exit_block) in enumerate(zip(stage_ops, exits)):
    existing |= {op.block for op in ops}
    later = [op for ops_later in stage_ops[k + 1:] for op in ops_later]
    hidden = {op.block for op in later if op.widen} & existing
    outputs = ({name for op in later for name in op.inputs} & existing) | hidden
    plans.append(StagePlan(tuple(ops), exit_block, tuple(sorted(outputs)), tuple(sorted(hidden))))
  return tuple(plans)


def branched(num_exits: int, width: int, blocks_per_stage: int = 1,
             num_levels: int = 3, stem: bool = False) -> tuple[StagePlan, ...]:
  """One trunk; stage k runs ``blocks_per_stage`` blocks at level min(k, L-1)."""
  stage_ops, exits = [], []
  prev, prev_level = ('stem', 0) if stem else (IMAGE, 0)
  for k in range(num_exits):
    level = min(k, num_levels - 1)
    blocks = [_Block(f's{k}_b{i}', level, width * 2 ** level) for i in range(blocks_per_stage)]
    stage_ops.append(_stem_ops(stem and k == 0, 'stem', width)
                     + _chain_ops(blocks, [b.base_channels for b in blocks], prev, prev_level))
    prev, prev_level = blocks[-1].name, level
    exits.append(prev)
  return _finish(stage_ops, exits)


def _base_blocks(width: int, blocks_per_level: int, num_levels: int, prefix: str = ''):
  return [_Block(f'{prefix}b{i}', level, width * 2 ** level)
          for i, level in enumerate(_levels(num_levels, blocks_per_level))]


def nested(num_exits: int, width: int, *, grow_width: bool, grow_depth: bool,
           blocks_per_level: int = 1, num_levels: int = 3,
           stem: bool = False) -> tuple[StagePlan, ...]:
  """Recursively nested networks growing in width, depth (interlaced) or both.

  The stem (with ``stem=True``) belongs to network 1 and keeps its width.
  """
  order = _base_blocks(width, blocks_per_level, num_levels)
  stage_ops = [_stem_ops(stem, 'stem', width)
               + _chain_ops(order, [b.base_channels for b in order], 'stem' if stem else IMAGE)]
  inputs = {op.block: (op.inputs, op.strides) for op in stage_ops[0]}
  exits = [order[-1].name]
  for k in range(1, num_exits):
    ops = []
    if grow_width:
      # Every block gains as many channels as it has: base * 2**(k-1).
      ops += [Op(b.name, *inputs[b.name], b.base_channels * 2 ** (k - 1), widen=True)
              for b in order]
    if grow_depth:
      full = 2 ** k if grow_width else 1
      new_order, prev = [], None
      for i, old in enumerate(order):
        new = _Block(f'{old.name}_{k}{i}', old.level, old.base_channels)
        srcs = (old.name,) + ((prev.name,) if prev else ())
        strides = (1,) + ((2 ** (old.level - prev.level),) if prev else ())
        ops.append(Op(new.name, srcs, strides, new.base_channels * full))
        inputs[new.name] = (srcs, strides)
        new_order += [old, new]
        prev = new
      order = new_order
    stage_ops.append(ops)
    exits.append(ops[-1].block)
  return _finish(stage_ops, exits)


def independent(num_exits: int, width: int, *, growth: str = 'width',
                blocks_per_level: int = 1, num_levels: int = 3,
                stem: bool = False) -> tuple[StagePlan, ...]:
  """K separate networks; network k is 2**k times wider, deeper, or both."""
  if growth not in ('width', 'depth', 'both'):
    raise ValueError(f"independent growth must be 'width', 'depth' or 'both', got {growth!r}.")
  stage_ops, exits = [], []
  for k in range(num_exits):
    w = width * 2 ** k if growth in ('width', 'both') else width
    n = blocks_per_level * 2 ** k if growth in ('depth', 'both') else blocks_per_level
    blocks = _base_blocks(w, n, num_levels, prefix=f'net{k}_')
    stage_ops.append(_stem_ops(stem, f'net{k}_stem', w)
                     + _chain_ops(blocks, [b.base_channels for b in blocks],
                                  f'net{k}_stem' if stem else IMAGE))
    exits.append(blocks[-1].name)
  return _finish(stage_ops, exits)
