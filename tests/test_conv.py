"""The convolution with a selectable weight gradient, against lax.conv_general_dilated."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import anytime_jax as aj
from anytime_jax import models
from anytime_jax.models import conv

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _grads(fn, x, w):
  """Gradients of a non-linear scalar of the convolution, so that dy is not constant."""
  return jax.grad(lambda x, w: jnp.sum(jnp.sin(fn(x, w))), (0, 1))(x, w)


def _rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.max(np.abs(a - b)) / np.max(np.abs(b))


@pytest.mark.parametrize('shape,kernel,strides,padding', [
    ((3, 9, 7, 5), (3, 3), (1, 1), 'SAME'),
    ((3, 9, 7, 5), (3, 3), (2, 2), 'SAME'),
    ((3, 9, 7, 5), (1, 1), (1, 1), 'SAME'),
    ((3, 9, 7, 5), (1, 1), (2, 2), 'SAME'),
    ((2, 8, 8, 3), (3, 3), (1, 1), 'VALID'),
    ((2, 11, 6, 4), (5, 3), (2, 1), 'SAME'),
    ((2, 9, 9, 3), (3, 3), (2, 2), ((1, 2), (0, 1))),
    ((4, 28, 28, 1), (3, 3), (1, 1), 'SAME'),
])
def test_contraction_gradients_match_xla(shape, kernel, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=(*kernel, shape[-1], 6)), jnp.float32)

  def ours(x, w):
    return conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC,
                                     weight_gradient='contraction')

  def xla(x, w):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=NHWC)

  np.testing.assert_array_equal(ours(x, w), xla(x, w))
  (dx, dw), (dx_ref, dw_ref) = _grads(ours, x, w), _grads(xla, x, w)
  np.testing.assert_array_equal(dx, dx_ref)  # XLA's input gradient is kept as it is
  assert _rel_err(dw, dw_ref) < 1e-5


def test_contraction_keeps_bfloat16_and_accumulates_in_float32():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(8, 12, 12, 8)), jnp.bfloat16)
  w = jnp.asarray(rng.normal(size=(3, 3, 8, 4)), jnp.bfloat16)
  fn = lambda x, w: conv.conv_general_dilated(x, w, (1, 1), 'SAME', dimension_numbers=NHWC,
                                              weight_gradient='contraction')
  dx, dw = _grads(fn, x, w)
  assert dx.dtype == dw.dtype == jnp.bfloat16
  dw_64 = _grads(lambda x, w: lax.conv_general_dilated(
      x, w, (1, 1), 'SAME', dimension_numbers=NHWC), x.astype(jnp.float32),
      w.astype(jnp.float32))[1]
  assert _rel_err(dw, dw_64) < 2e-2  # bfloat16 rounding of the result, not of the sum


@pytest.mark.parametrize('kwargs', [
    {'rhs_dilation': (2, 2)},
    {'lhs_dilation': (2, 1)},
    {'feature_group_count': 2},
    {'dimension_numbers': ('NCHW', 'OIHW', 'NCHW')},
])
def test_other_convolutions_are_xla_unchanged(kwargs):
  rng = np.random.default_rng(2)
  nchw = kwargs.get('dimension_numbers') is not None
  x = jnp.asarray(rng.normal(size=(2, 4, 9, 9) if nchw else (2, 9, 9, 4)), jnp.float32)
  w_shape = (6, 4, 3, 3) if nchw else (3, 3, 4 // kwargs.get('feature_group_count', 1), 6)
  w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
  kwargs = {'dimension_numbers': NHWC, **kwargs}
  ours = lambda x, w: conv.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                                weight_gradient='contraction',
                                                **kwargs)
  xla = lambda x, w: lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), **kwargs)
  for a, b in zip(_grads(ours, x, w), _grads(xla, x, w)):
    np.testing.assert_array_equal(a, b)


def test_bad_weight_gradient_names_the_choices():
  x, w = jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1))
  with pytest.raises(ValueError, match="'xla', 'contraction'"):
    conv.conv_general_dilated(x, w, (1, 1), 'SAME', weight_gradient='fast')
  with pytest.raises(ValueError, match='conv_weight_gradient'):
    models.create('branched', num_classes=3, conv_weight_gradient='fast')


@pytest.mark.parametrize('name', [pytest.param('nested_width', marks=pytest.mark.slow), 'branched'])
def test_networks_train_the_same_with_either_weight_gradient(name):
  x = jax.random.normal(jax.random.key(0), (6, 8, 8, 1))
  y = jnp.arange(6) % 3
  per_mode = {}
  for mode in conv.WEIGHT_GRADIENTS:
    network = models.create(name, num_classes=3, num_exits=2, width=4, num_levels=2,
                            conv_weight_gradient=mode)
    variables = models.init_variables(network, jax.random.key(1), x)
    per_mode[mode] = (jax.jit(network.apply)(variables, x),
                      jax.jit(lambda v, n=network: aj.staged_exit_jacobian(n, v, x, y))(variables))
  (logits, (jac, losses, _)), (logits_c, (jac_c, losses_c, _)) = per_mode.values()
  np.testing.assert_array_equal(logits, logits_c)
  np.testing.assert_array_equal(losses, losses_c)
  # Equal up to float32 rounding of sums over a batch of 6 x 8 x 8 positions.
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(jac))
  for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(jac_c)):
    np.testing.assert_allclose(a, b, atol=5e-5 * scale)
