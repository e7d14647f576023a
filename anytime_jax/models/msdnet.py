"""MSDNet, the multi-scale dense network, as a sequence of stages.

MSDNet (Huang et al., "Multi-Scale Dense Networks for Resource Efficient Image
Classification", ICLR 2018) keeps a feature map at every resolution ("scale")
from the first layer on, so that an early classifier already sees coarse,
high-level features. Each dense layer adds ``growth_rate * growth_factor[s]``
channels at every scale ``s``: at the finest scale from a (bottlenecked)
convolution of that scale, at the others half from a strided convolution of
the next finer scale and half from a convolution of the same scale, all
concatenated to the layer's input (dense connectivity). As depth grows the
finest scales are dropped ("max" pruning) and a 1x1 transition halves the
channels. Exit k reads the coarsest scale after stage k through two strided
convolutions and a dense layer.

This follows the authors' CIFAR configuration (``--nBlocks 7 --step 2 --base 4
--nChannels 16 --growthRate 6 --grFactor 1-2-4 --bnFactor 1-2-4 --prune max
--reduction 0.5 --bottleneck``, github.com/kalviny/MSDNet-PyTorch; later
papers, e.g. Li et al. 2019, use ``--growthRate 16``): stage 1
runs the stem (one 3x3 convolution per scale, strided between scales) and
``base`` dense layers; every later stage runs ``step`` layers. Each stage is a
module with the same contract as :class:`anytime_jax.models.Stage`, so anytime
inference, early exit, FLOPs and the staged gradient engine serve it unchanged.
Convolution kernels are initialized as the authors do (normal, fan-out).
Deviations: the exit pools its last map globally (the authors' ``AvgPool2d(2)``
of a 2x2 map on 32x32 inputs; the same on 28x28), the exit's dense layer keeps
Flax's initializer, and the CIFAR stem is the default (for ImageNet the authors
use a 7x7 strided convolution and max pooling; ``stem=True`` builds it, with
``growth_factor`` 2**s where the authors' ImageNet network uses 1-2-4-4).

The carry between stages is ``{'out': {'scale0': [B, H, W, C0], ...},
'hidden': {}}``: the scales still alive after the stage.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Union

import flax.linen as nn
import jax.numpy as jnp

from anytime_jax.models.network import Carry, layer_constructors
from anytime_jax.models.plans import IMAGE


@dataclasses.dataclass(frozen=True)
class DenseLayer:
  """A multi-scale dense layer producing the scales ``out_scales`` (finest first)."""
  out_scales: tuple[int, ...]
  growth: int


@dataclasses.dataclass(frozen=True)
class Transition:
  """A 1x1 convolution per scale down to ``channels * growth_factor[s]`` channels."""
  channels: int


@dataclasses.dataclass(frozen=True)
class MSDPlan:
  """One MSDNet stage.

  Attributes:
    stem: the stage starts from the image with the stem, giving ``channels *
      growth_factor[s]`` channels at every scale (stage 1 only).
    channels: the stem's base channels (``nChannels``).
    layers: dense layers and transitions, in run order.
    growth_factor: channel multiplier per scale (``grFactor``).
    bottleneck_factor: bottleneck width per scale as a multiple of the
      channels a convolution adds (``bnFactor``).
    head_channels: channels of the exit's two convolutions.
    imagenet_stem: the stem's finest scale is a 7x7 stride-2 convolution and a
      3x3 stride-2 max-pool (the authors' ImageNet stem).
  """
  stem: bool
  channels: int
  layers: tuple[Union[DenseLayer, Transition], ...]
  growth_factor: tuple[int, ...]
  bottleneck_factor: tuple[int, ...]
  head_channels: int
  imagenet_stem: bool = False


def plan(num_exits: int, width: int, *, growth_rate: int = 6, base: int = 4, step: int = 2,
         num_levels: int = 3, reduction: float = 0.5,
         growth_factor: Optional[tuple[int, ...]] = None,
         bottleneck_factor: Optional[tuple[int, ...]] = None,
         head_channels: int = 128, stem: bool = False) -> tuple[MSDPlan, ...]:
  """The stages of an MSDNet with ``num_exits`` exits (the authors' ``nBlocks``).

  Args:
    num_exits: K stages and exits.
    width: the stem's channels at the finest scale (``nChannels``).
    growth_rate: channels each dense layer adds at the finest scale (``growthRate``).
    base: dense layers in stage 1. step: dense layers in each later stage.
    num_levels: number of scales (``nScales``), each half the previous resolution.
    reduction: a transition keeps ``floor(reduction * C)`` of the ``C``
      base channels (0 disables transitions).
    growth_factor, bottleneck_factor: per scale; default ``2**s`` each.
    head_channels: channels of each exit's two convolutions.
    stem: the authors' ImageNet stem at the finest scale (a 7x7 convolution of
      stride 2 and a 3x3 max-pool of stride 2) instead of a 3x3 convolution.

  Returns:
    K :class:`MSDPlan` s. Scales are pruned as the authors' ``--prune max``:
    with ``N = base + (K - 1) * step`` layers in all, layer ``n`` (from 1)
    keeps the coarsest ``num_levels - floor((n - 1) / ceil(N / num_levels))``
    scales, and a transition follows every layer that drops one.

  Example:

  >>> from anytime_jax.models import msdnet
  >>> stages = msdnet.plan(7, 16)  # the authors' CIFAR configuration
  >>> [sum(isinstance(l, msdnet.DenseLayer) for l in s.layers) for s in stages]
  [4, 2, 2, 2, 2, 2, 2]
  >>> [s.layers[-1].out_scales for s in stages]  # the scales alive after each stage
  [(0, 1, 2), (0, 1, 2), (1, 2), (1, 2), (1, 2), (2,), (2,)]
  """
  growth_factor = growth_factor or tuple(2 ** s for s in range(num_levels))
  bottleneck_factor = bottleneck_factor or tuple(2 ** s for s in range(num_levels))
  for name, value in (('growth_rate', growth_rate), ('base', base), ('step', step),
                      ('num_levels', num_levels), ('head_channels', head_channels)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'msdnet {name} must be a positive integer, got {value!r}.')
  for name, factors in (('growth_factor', growth_factor),
                        ('bottleneck_factor', bottleneck_factor)):
    if len(factors) != num_levels or any(f < 1 for f in factors):
      raise ValueError(f'msdnet {name} needs {num_levels} positive entries (one per scale, '
                       f'num_levels={num_levels}), got {factors!r}.')
  if any(growth_rate * f < 2 for f in growth_factor[1:]):
    raise ValueError('msdnet: growth_rate * growth_factor[s] must be >= 2 for s >= 1 (half '
                     'comes from the finer scale, half from the same scale); raise growth_rate.')
  if not 0.0 <= reduction <= 1.0:
    raise ValueError(f'msdnet reduction must be in [0, 1], got {reduction!r}.')
  total = base + (num_exits - 1) * step
  interval = math.ceil(total / num_levels)
  channels, n, stages = width, 0, []
  for k in range(num_exits):
    layers: list[Union[DenseLayer, Transition]] = []
    for _ in range(base if k == 0 else step):
      n += 1
      in_scales = num_levels - max(0, n - 2) // interval
      out_scales = num_levels - (n - 1) // interval
      layers.append(DenseLayer(tuple(range(num_levels - out_scales, num_levels)), growth_rate))
      channels += growth_rate
      if in_scales > out_scales and reduction > 0:
        channels = math.floor(reduction * channels)
        layers.append(Transition(channels))
    stages.append(MSDPlan(k == 0, width, tuple(layers), tuple(growth_factor),
                          tuple(bottleneck_factor), head_channels, stem))
  return tuple(stages)


# The authors draw convolution kernels from N(0, 2 / (kh * kw * C_out)).
_HE_FAN_OUT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def _key(scale: int) -> str:
  return f'scale{scale}'


class MSDStage(nn.Module):
  """Runs one :class:`MSDPlan`, then its exit; the contract of :class:`anytime_jax.models.Stage`."""
  plan: MSDPlan
  num_classes: int
  dtype: Any = jnp.float32
  conv_weight_gradient: str = 'xla'

  @nn.compact
  def __call__(self, carry: Carry, train: bool = False):
    """Returns ``(carry, logits [B, num_classes])``."""
    conv, norm = layer_constructors(self.dtype, self.conv_weight_gradient)

    def conv_norm_relu(x, channels, kernel=3, stride=1):
      # The authors pad 3x3 convolutions by one on every side (PyTorch's padding=1).
      y = conv(channels, (kernel, kernel), strides=stride, padding=kernel // 2,
               kernel_init=_HE_FAN_OUT)(x)
      return nn.relu(norm(use_running_average=not train)(y))

    def bottlenecked(x, channels, stride, factor):
      inner = min(x.shape[-1], factor * channels)
      return conv_norm_relu(conv_norm_relu(x, inner, kernel=1), channels, stride=stride)

    p = self.plan
    if p.stem:
      x, features = carry['out'][IMAGE], {}
      for s in range(len(p.growth_factor)):
        if s == 0 and p.imagenet_stem:
          x = conv_norm_relu(x, p.channels * p.growth_factor[0], kernel=7, stride=2)
          x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
          x = conv_norm_relu(x, p.channels * p.growth_factor[s], stride=1 if s == 0 else 2)
        features[s] = x
    else:
      features = {int(name[len('scale'):]): x for name, x in carry['out'].items()}
    for layer in p.layers:
      if isinstance(layer, Transition):
        features = {s: conv_norm_relu(x, layer.channels * p.growth_factor[s], kernel=1)
                    for s, x in features.items()}
        continue
      new = {}
      for s in layer.out_scales:
        grow = layer.growth * p.growth_factor[s]
        if s - 1 in features:
          parts = [features[s],
                   bottlenecked(features[s - 1], grow // 2, 2, p.bottleneck_factor[s - 1]),
                   bottlenecked(features[s], grow // 2, 1, p.bottleneck_factor[s])]
        else:
          parts = [features[s], bottlenecked(features[s], grow, 1, p.bottleneck_factor[s])]
        new[s] = jnp.concatenate(parts, axis=-1)
      features = new
    y = features[max(features)]
    for _ in range(2):
      y = conv_norm_relu(y, p.head_channels, stride=2)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, name='head')(jnp.mean(y, axis=(1, 2)))
    return ({'out': {_key(s): x for s, x in features.items()}, 'hidden': {}},
            logits.astype(jnp.float32))


__all__ = ['DenseLayer', 'MSDPlan', 'MSDStage', 'Transition', 'plan']
