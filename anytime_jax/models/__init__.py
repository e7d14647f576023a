"""Flax anytime networks, all built from one stage abstraction.

``create(name, num_classes=..., num_exits=4)`` returns an
:class:`AnytimeNetwork` whose ``apply(variables, x, train=False)`` gives the
stacked exit logits ``[K, B, C]``.

>>> import jax, jax.numpy as jnp, anytime_jax as aj
>>> network = aj.models.create('nested_width', num_classes=10, num_exits=3, width=2)
>>> x = jnp.zeros((2, 8, 8, 1))  # [B, H, W, C]
>>> variables = aj.models.init_variables(network, jax.random.key(0), x)
>>> jax.jit(network.apply)(variables, x).shape  # [K, B, C]
(3, 2, 10)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import jax.numpy as jnp

from anytime_jax.models import conv as conv_lib
from anytime_jax.models import msdnet
from anytime_jax.models import plans
from anytime_jax.models import vit
from anytime_jax.models.network import AnytimeNetwork
from anytime_jax.models.network import Stage
from anytime_jax.models.network import apply_stage
from anytime_jax.models.network import init_variables
from anytime_jax.models.network import initial_carry
from anytime_jax.models.network import stage_variables
from anytime_jax.models.plans import input_options

ARCHITECTURES = ('branched', 'nested_width', 'nested_depth', 'nested_both', 'independent',
                 'msdnet', 'vit')

# Base widths chosen so that every default network's last exit costs tens of
# MFLOPs on a 28x28 image (see `python -m experiments.describe`); MSDNet's is its
# authors' CIFAR configuration. The width-nested ViT (``growth='width'``) starts
# from NESTED_VIT_WIDTH instead: its streams double (16, 16, 32, 64 channels).
DEFAULT_WIDTH = {'branched': 16, 'nested_width': 4, 'nested_depth': 8,
                 'nested_both': 2, 'independent': 4, 'msdnet': 16, 'vit': 64}
NESTED_VIT_WIDTH = 16


def create(name: str, *, num_classes: int, num_exits: int = 4, width: Optional[int] = None,
           dtype: Any = jnp.float32, conv_weight_gradient: str = 'xla',
           **options: Any) -> AnytimeNetwork:
  """Builds an anytime network.

  Args:
    name: one of ``ARCHITECTURES``: ``'branched'``, ``'nested_width'``,
      ``'nested_depth'``, ``'nested_both'``, ``'independent'`` (see
      :mod:`anytime_jax.models.plans`), ``'msdnet'`` (see
      :mod:`anytime_jax.models.msdnet`) or ``'vit'`` (an early-exit Vision
      Transformer, see :mod:`anytime_jax.models.vit`).
    num_classes: classes of every exit.
    num_exits: K, the number of stages and exits.
    width: channels of the first (full-resolution) blocks; each resolution
      level doubles them (MSDNet: its stem's ``nChannels``; ViT: the token
      channels, of stream 0 when width-nested). Default: ``DEFAULT_WIDTH[name]``
      (``NESTED_VIT_WIDTH`` for ``'vit'`` with ``growth='width'``).
    dtype: computation dtype (parameters stay float32); e.g. ``jnp.bfloat16``.
    conv_weight_gradient: how convolutions compute their weight gradient:
      ``'xla'`` (default) or ``'contraction'`` (see
      :func:`anytime_jax.models.conv.conv_general_dilated`). Results are equal up to
      float32 rounding; only the speed differs (``python -m experiments.bench``).
      The ViT has no convolutions and ignores it.
    **options: ``blocks_per_stage`` (branched), ``blocks_per_level`` (nested,
      independent), ``num_levels`` (resolution levels, default 3), ``stem`` (a
      7x7 stride-2 convolution and max-pool first, for ImageNet-sized images;
      :func:`input_options` gives both for an image shape), ``growth``
      (independent: ``'width'``, ``'depth'`` or ``'both'``); MSDNet takes
      ``num_levels`` and the options of :func:`anytime_jax.models.msdnet.plan`;
      the ViT those of :func:`anytime_jax.models.vit.create`: ``growth``
      (``None``: branched, or ``'width'``), ``blocks_per_stage`` (branched,
      default 2), ``depth`` (width-nested, default 4), ``num_heads`` (4),
      ``mlp_ratio`` (4), ``patch_size`` (4), ``dropout`` (0.0) and ``head``
      (``'per_exit'`` or ``'tied'``).

  Returns:
    An :class:`AnytimeNetwork` (a ``flax.linen.Module``).
  """
  if name not in ARCHITECTURES:
    raise ValueError(f'Unknown model {name!r}; choose one of {", ".join(ARCHITECTURES)}.')
  if not isinstance(num_exits, int) or num_exits < 1:
    raise ValueError(f'num_exits must be a positive integer, got {num_exits!r}.')
  if not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f'num_classes must be an integer >= 2, got {num_classes!r}.')
  if width is None:
    nested_vit = name == 'vit' and options.get('growth') == 'width'
    width = NESTED_VIT_WIDTH if nested_vit else DEFAULT_WIDTH[name]
  if not isinstance(width, int) or width < 1:
    raise ValueError(f'width must be a positive integer, got {width!r}.')
  if conv_weight_gradient not in conv_lib.WEIGHT_GRADIENTS:
    raise ValueError(f'conv_weight_gradient must be one of {conv_lib.WEIGHT_GRADIENTS}, '
                     f'got {conv_weight_gradient!r}.')
  if name == 'vit':
    try:
      return vit.create(num_exits, width, num_classes=num_classes, dtype=dtype, **options)
    except TypeError as e:
      raise ValueError(f'Bad option for model {name!r}: {e}. See anytime_jax.models.vit.create.'
                       ) from e
  builders: dict[str, Callable[..., Any]] = {
      'branched': plans.branched,
      'nested_width': lambda k, w, **o: plans.nested(k, w, grow_width=True, grow_depth=False, **o),
      'nested_depth': lambda k, w, **o: plans.nested(k, w, grow_width=False, grow_depth=True, **o),
      'nested_both': lambda k, w, **o: plans.nested(k, w, grow_width=True, grow_depth=True, **o),
      'independent': plans.independent,
      'msdnet': msdnet.plan,
  }
  try:
    stage_plans = builders[name](num_exits, width, **options)
  except TypeError as e:
    raise ValueError(f'Bad option for model {name!r}: {e}. See anytime_jax.models.create.') from e
  stage_class = msdnet.MSDStage if name == 'msdnet' else Stage
  return AnytimeNetwork(stages=tuple(stage_class(plan, num_classes, dtype, conv_weight_gradient)
                                     for plan in stage_plans))


__all__ = ['ARCHITECTURES', 'AnytimeNetwork', 'DEFAULT_WIDTH', 'NESTED_VIT_WIDTH', 'Stage',
           'apply_stage', 'create', 'init_variables', 'initial_carry', 'input_options',
           'stage_variables']
