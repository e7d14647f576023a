"""A convolution whose weight gradient can be a matmul-shaped contraction.

XLA computes a convolution's weight gradient as a "filter-gradient
convolution". On some CPUs that kernel has measured at 4-5x the forward pass;
on others (an AMD Zen 4 with XLA's YNNPACK fusions, jax 0.10.2) at about 0.6x,
where the contraction below is 2-3x slower than XLA
(``python -m experiments.bench --breakdown``). For a kernel
``[kh, kw, Cin, Cout]`` the same gradient is a sum over kernel taps ``(i, j)``
of ``x_ij^T dy``, where ``x_ij [B*Ho*Wo, Cin]`` is the input shifted by the tap
and subsampled by the stride, and ``dy [B*Ho*Wo, Cout]`` the output
cotangent: ``kh * kw`` ordinary matrix products.

:func:`conv_general_dilated` is a drop-in for ``lax.conv_general_dilated``
(Flax's ``nn.Conv(..., conv_general_dilated=...)`` takes it) that keeps XLA's
forward pass and input gradient and replaces only the weight gradient, for 2-D
NHWC convolutions without dilation or feature groups; every other convolution
goes to ``lax.conv_general_dilated`` unchanged. The result equals XLA's to
float32 rounding (tested). Measure on your machine before choosing it.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import lax

WEIGHT_GRADIENTS = ('xla', 'contraction')

_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))


def _xla_conv(x, w, strides, pads):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC)


def _xla_weight_gradient(x, w, dy, strides, pads):
  _, vjp = jax.vjp(lambda w: _xla_conv(x, w, strides, pads), w)
  return vjp(dy)[0]


def _contraction_weight_gradient(x, w, dy, strides, pads):
  """``dw [kh, kw, Cin, Cout]`` as one ``x_ij^T dy`` product per kernel tap."""
  kh, kw = w.shape[:2]
  (sh, sw), (_, ho, wo, _) = strides, dy.shape
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  accumulate = jnp.promote_types(w.dtype, jnp.float32)
  taps = []
  for i in range(kh):
    for j in range(kw):
      shifted = lax.slice(x, (0, i, j, 0),
                          (x.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, x.shape[3]),
                          (1, sh, sw, 1))
      taps.append(jnp.einsum('bhwc,bhwo->co', shifted, dy, preferred_element_type=accumulate))
  return jnp.stack(taps).reshape(w.shape).astype(w.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d(x, w, strides, pads, weight_gradient):
  del weight_gradient  # only the backward pass differs
  return _xla_conv(x, w, strides, pads)


def _conv2d_fwd(x, w, strides, pads, weight_gradient):
  return _xla_conv(x, w, strides, pads), (x, w)


def _conv2d_bwd(strides, pads, weight_gradient, residuals, dy):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x: _xla_conv(x, w, strides, pads), x)
  dx = input_vjp(dy)[0]
  weight_gradient_fn = {'contraction': _contraction_weight_gradient,
                        'xla': _xla_weight_gradient}[weight_gradient]
  return dx, weight_gradient_fn(x, w, dy, strides, pads)


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Optional[Sequence[int]] = None,
    rhs_dilation: Optional[Sequence[int]] = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
    *,
    weight_gradient: str = 'xla',
) -> jax.Array:
  """``lax.conv_general_dilated`` with a selectable weight gradient.

  Args:
    lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
      dimension_numbers, feature_group_count, batch_group_count, precision,
      preferred_element_type: as in ``lax.conv_general_dilated``.
    weight_gradient: ``'xla'`` (default): XLA's own kernel, i.e. exactly
      ``lax.conv_general_dilated``; ``'contraction'``: one ``x_ij^T dy``
      matrix product per kernel tap (accumulated in float32).

  Returns:
    The convolution's output; only its gradient with respect to ``rhs`` is
    computed differently, and only for 2-D NHWC/HWIO convolutions without
    dilation, groups, or non-default precision arguments.
  """
  if weight_gradient not in WEIGHT_GRADIENTS:
    raise ValueError(f'weight_gradient must be one of {WEIGHT_GRADIENTS}, '
                     f'got {weight_gradient!r}.')
  generic = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
      dimension_numbers, feature_group_count, batch_group_count, precision,
      preferred_element_type)
  if lhs.ndim != 4 or weight_gradient == 'xla':
    return generic()
  numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
  plain = (numbers == _NHWC and feature_group_count == 1 and batch_group_count == 1
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and precision is None and preferred_element_type is None)
  if not plain:
    return generic()
  strides = tuple(int(s) for s in window_strides)
  given = (lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
           if isinstance(padding, str) else padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in given)
  if min(min(p) for p in pads) < 0:
    return generic()
  return _conv2d(lhs, rhs, strides, pads, weight_gradient)
