"""An early-exit Vision Transformer on the stage abstraction.

The image is cut into non-overlapping ``patch_size`` x ``patch_size`` patches,
each embedded by one dense layer, plus a learned position embedding. Blocks
are pre-norm (Dosovitskiy et al., ICLR 2021): ``x + attn(norm(x))``, then
``x + mlp(norm(x))`` with a GELU MLP ``mlp_ratio`` times wider. Each exit is a
LayerNorm, the mean over tokens and a dense layer (float32 logits).

Two shapes:

* branched (``growth=None``, the default): one trunk; stage 0 embeds the
  patches, stage k runs ``blocks_per_stage`` blocks and exits. The carry is
  ``{'out': {'tokens': [B, T, D]}, 'hidden': {}}``.
* width-nested (``growth='width'``): the paper's width recursion carried to
  transformers, as ShellElastic builds elastic transformers. Stage k runs a
  stream of its own channels through the whole ``depth``: stream 0 has
  ``width`` channels and every later stream as many as all earlier ones
  together (``width, width, 2 width, 4 width, ...``), so sub-network k is
  ``width * 2**k`` wide, the same doubling as the convolutional
  ``nested_width``. Every hidden matrix is block lower triangular: stream k's
  query, key and value projections, its attention output projection and both
  MLP layers read the channels of streams ``<= k`` and never a later one;
  LayerNorms are per stream, so no statistic mixes streams; attention heads
  (``width / num_heads`` channels each) belong to one stream. One full-width
  pass therefore holds every sub-network's exact hidden states, and exit k
  (its own LayerNorm over streams ``<= k``) never depends on a later stage.
  The carry holds, per block, the earlier streams' inputs to those matrices
  (``'block{l}_ln1'``, ``'_attn'``, ``'_ln2'``, ``'_mlp'``: ``[B, T, e]``,
  ``[B, T, mlp_ratio e]`` for the MLP's hidden layer) and their last tokens.

A tied head (``head='tied'``) is one classifier for every exit, as LayerSkip
trains its exits through one LM head: stage 0 owns it and hands its kernel
and bias on in the carry (``carry['head']``), so every later exit's gradient
reaches stage 0's parameters through the carry's cotangent, exactly. Under
width nesting stream k adds the kernel rows of its own channels.

Dropout (``dropout`` rate; ``'dropout'`` rng collection, train mode only)
follows the embedding, the attention output projection and the MLP.

>>> import jax, jax.numpy as jnp, anytime_jax as aj
>>> network = aj.models.create('vit', num_classes=10, num_exits=2, width=8, num_heads=2,
...                            growth='width', depth=2, head='tied')
>>> x = jnp.zeros((3, 8, 8, 1))  # [B, H, W, C]: 4 patches of 4 x 4
>>> variables = aj.models.init_variables(network, jax.random.key(0), x)
>>> network.apply(variables, x).shape  # [K, B, C]
(2, 3, 10)
>>> variables['params']['stages_1']['tied_kernel'].shape  # rows of stream 1's 8 channels
(8, 10)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Optional, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from anytime_jax.models.network import AnytimeNetwork, Carry
from anytime_jax.models.plans import IMAGE

GROWTHS = (None, 'width')
HEADS = ('per_exit', 'tied')
TOKENS = 'tokens'
# What a later stream reads of each block: the inputs of its block lower-triangular matrices.
ACTIVATIONS = ('ln1', 'attn', 'ln2', 'mlp')


def patches(x: jax.Array, size: int) -> jax.Array:
  """``[B, H, W, C] -> [B, (H / size) (W / size), size * size * C]``, row-major patches."""
  b, h, w, c = x.shape
  if h % size or w % size:
    raise ValueError(f'vit: image size {h}x{w} is not divisible by patch_size {size}.')
  x = x.reshape(b, h // size, size, w // size, size, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // size) * (w // size), size * size * c)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, head_dim: int) -> jax.Array:
  """Softmax attention of heads of ``head_dim`` channels: ``[B, T, D]`` each -> ``[B, T, D]``."""
  b, t, d = q.shape
  split = lambda a: a.reshape(b, t, d // head_dim, head_dim)
  logits = jnp.einsum('bqhc,bkhc->bhqk', split(q), split(k)) / math.sqrt(head_dim)
  # The softmax in float32: bfloat16 logits lose the small differences it amplifies.
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
  return jnp.einsum('bhqk,bkhc->bqhc', weights, split(v)).reshape(b, t, d)


class Embedding(nn.Module):
  """Patch embedding plus learned positions: ``[B, H, W, C] -> [B, T, width]``."""
  width: int
  patch_size: int
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, image: jax.Array, train: bool) -> jax.Array:
    tokens = nn.Dense(self.width, dtype=self.dtype, name='patch')(patches(image, self.patch_size))
    position = self.param('position', nn.initializers.normal(0.02), tokens.shape[1:])  # [T, D]
    return nn.Dropout(self.dropout, deterministic=not train)(tokens + position.astype(self.dtype))


class Block(nn.Module):
  """A pre-norm transformer block of one stream, reading the earlier streams' activations.

  ``x [B, T, d]`` is the stream's residual. ``earlier`` maps each name of
  ``ACTIVATIONS`` to the earlier streams' activations there (``[B, T, e]``,
  ``[B, T, mlp_ratio e]`` for ``'mlp'``), or is empty (the first or only
  stream). Every dense layer reads the earlier streams' channels and this
  stream's and writes this stream's: one block-row of a block lower-triangular
  matrix.

  Returns ``(x [B, T, d], acts)``: ``acts`` the same names, this stream's
  channels after the earlier ones, for a later stream to read.
  """
  head_dim: int
  mlp_ratio: int
  dropout: float
  dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, earlier: dict[str, jax.Array], train: bool
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
    d = x.shape[-1]
    dense = functools.partial(nn.Dense, dtype=self.dtype)
    drop = functools.partial(nn.Dropout, self.dropout, deterministic=not train)
    acts: dict[str, jax.Array] = {}

    def widen(name: str, own: jax.Array) -> jax.Array:
      acts[name] = jnp.concatenate([earlier[name], own], -1) if earlier else own
      return acts[name]

    q, k, v = jnp.split(dense(3 * d, name='qkv')(widen('ln1', nn.LayerNorm(dtype=self.dtype)(x))),
                        3, axis=-1)
    x = x + drop()(dense(d, name='proj')(widen('attn', attention(q, k, v, self.head_dim))))
    hidden = nn.gelu(dense(self.mlp_ratio * d, name='fc1')(
        widen('ln2', nn.LayerNorm(dtype=self.dtype)(x))))
    x = x + drop()(dense(d, name='fc2')(widen('mlp', hidden)))
    return x, acts


class ViTStage(nn.Module):
  """One stage of the ViT: ``stage(carry, train=...) -> (carry, logits [B, num_classes])``.

  Branched: stage 0 embeds the image (``embed``), every stage runs
  ``num_blocks`` blocks on the carried tokens. Width-nested (``nested``): the
  stage embeds the image into a new stream of ``width`` channels and runs it
  through ``num_blocks`` blocks beside the carried streams.
  """
  num_classes: int
  width: int
  num_blocks: int
  embed: bool
  nested: bool
  head_dim: int
  mlp_ratio: int
  patch_size: int
  dropout: float
  tied_head: bool
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, carry: Carry, train: bool = False) -> tuple[Carry, jax.Array]:
    outs, hidden = carry['out'], dict(carry['hidden'])
    if self.embed:
      x = Embedding(self.width, self.patch_size, self.dropout, self.dtype, name='embed')(
          outs[IMAGE], train)
    else:
      x = outs[TOKENS]
    for l in range(self.num_blocks):
      names = [f'block{l}_{a}' for a in ACTIVATIONS]
      earlier = {a: hidden[n] for a, n in zip(ACTIVATIONS, names)} if names[0] in hidden else {}
      x, acts = Block(self.head_dim, self.mlp_ratio, self.dropout, self.dtype,
                      name=f'block{l}')(x, earlier, train)
      if self.nested:
        hidden.update(zip(names, (acts[a] for a in ACTIVATIONS)))
    if self.nested:
      tokens = jnp.concatenate([outs[TOKENS], x], -1) if TOKENS in outs else x
      new_outs = {IMAGE: outs[IMAGE], TOKENS: tokens}
    else:
      tokens, new_outs = x, {TOKENS: x}
    features = jnp.mean(nn.LayerNorm(dtype=self.dtype, name='exit_norm')(tokens), axis=1)  # [B, S]
    new_carry: Carry = {'out': new_outs, 'hidden': hidden}
    if not self.tied_head:
      logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(features)
      return new_carry, logits.astype(jnp.float32)
    new_carry['head'] = head = self._tied(carry.get('head'), features.shape[-1])
    logits = features @ head['kernel'].astype(self.dtype) + head['bias'].astype(self.dtype)
    return new_carry, logits.astype(jnp.float32)

  def _tied(self, head: Optional[dict[str, jax.Array]], features: int) -> dict[str, jax.Array]:
    """The tied head for ``features`` channels: the carried one plus the rows this stage adds.

    The first stage creates the bias; a stage whose features outnumber the
    carried kernel's rows (stage 0, every stream under width nesting) creates
    the rows of its own channels, initialized as a dense layer over them.
    """
    if head is None:
      head = {'kernel': jnp.zeros((0, self.num_classes), jnp.float32),
              'bias': self.param('tied_bias', nn.initializers.zeros, (self.num_classes,))}
    new = features - head['kernel'].shape[0]
    if new == 0:
      return head
    rows = self.param('tied_kernel', nn.initializers.lecun_normal(), (new, self.num_classes))
    return {'kernel': jnp.concatenate([head['kernel'], rows]), 'bias': head['bias']}


def _positive_int(name: str, value: Any) -> int:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f'vit: {name} must be a positive integer, got {value!r}.')
  return value


def create(num_exits: int, width: int, *, num_classes: int, dtype: Any = jnp.float32,
           growth: Optional[str] = None, blocks_per_stage: Union[int, Sequence[int], None] = None,
           depth: Optional[int] = None, num_heads: int = 4, mlp_ratio: int = 4,
           patch_size: int = 4, dropout: float = 0.0, head: str = 'per_exit') -> AnytimeNetwork:
  """The early-exit ViT as an :class:`AnytimeNetwork` of K = ``num_exits`` stages.

  Args:
    num_exits: K.
    width: token channels: of the trunk (branched) or of stream 0 (width-nested).
    num_classes: classes of every exit.
    dtype: computation dtype (parameters stay float32).
    growth: ``None`` (branched) or ``'width'`` (width-nested; see the module).
    blocks_per_stage: branched: blocks before each exit, an int or K ints
      (default 2: exits after blocks 2, 4, ...).
    depth: width-nested: blocks of every stream (default 4).
    num_heads: attention heads of ``width`` channels; heads keep
      ``width / num_heads`` channels, so a width-nested stream of ``2**j width``
      channels has ``2**j num_heads`` heads.
    mlp_ratio: the MLP's hidden width over the stream's width.
    patch_size: side of the square patches; must divide the image's sides.
    dropout: dropout rate in train mode (needs a ``'dropout'`` rng then).
    head: ``'per_exit'`` (a classifier per exit) or ``'tied'`` (one, owned by
      stage 0 and carried to the others).
  """
  if growth not in GROWTHS:
    raise ValueError(f'vit: growth must be one of {GROWTHS}, got {growth!r}.')
  if head not in HEADS:
    raise ValueError(f'vit: head must be one of {HEADS}, got {head!r}.')
  for name, value in (('num_heads', num_heads), ('mlp_ratio', mlp_ratio),
                      ('patch_size', patch_size)):
    _positive_int(name, value)
  if width % num_heads:
    raise ValueError(f'vit: width {width} is not divisible by num_heads {num_heads}.')
  if not 0.0 <= dropout < 1.0:
    raise ValueError(f'vit: dropout must be in [0, 1), got {dropout!r}.')
  common = dict(num_classes=num_classes, head_dim=width // num_heads, mlp_ratio=mlp_ratio,
                patch_size=patch_size, dropout=float(dropout), tied_head=head == 'tied',
                dtype=dtype)
  if growth == 'width':
    if blocks_per_stage is not None:
      raise ValueError("vit: blocks_per_stage is for branched networks; with growth='width' "
                       'every stream runs depth blocks.')
    depth = _positive_int('depth', 4 if depth is None else depth)
    widths = [width] + [width * 2 ** (k - 1) for k in range(1, num_exits)]
    return AnytimeNetwork(stages=tuple(
        ViTStage(width=w, num_blocks=depth, embed=True, nested=True, **common) for w in widths))
  if depth is not None:
    raise ValueError("vit: depth is for growth='width'; branched networks take blocks_per_stage.")
  blocks = 2 if blocks_per_stage is None else blocks_per_stage
  counts = [blocks] * num_exits if isinstance(blocks, int) else list(blocks)
  if len(counts) != num_exits:
    raise ValueError(f'vit: blocks_per_stage needs {num_exits} entries, got {blocks!r}.')
  return AnytimeNetwork(stages=tuple(
      ViTStage(width=width, num_blocks=_positive_int('blocks_per_stage', n), embed=k == 0,
               nested=False, **common) for k, n in enumerate(counts)))
