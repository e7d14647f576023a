"""Flax NNX: our networks as NNX modules (same invariants), NNX stages in the staged engine."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import anytime_jax as aj
from anytime_jax import models

from tests.networks import small

X = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
Y = jnp.arange(6) % 5


@functools.lru_cache(maxsize=None)
def _model(name):
  num_exits = 2 if name == 'nested_both' else 3
  return aj.create_nnx(name, num_classes=5, num_exits=num_exits, width=4, **small(name, num_levels=2),
                       example=X, rngs=nnx.Rngs(0))


# The linen networks' invariant runs for every architecture in tests/test_models.py; through
# the NNX bridge the quick suite keeps two, CI runs them all.
@pytest.mark.parametrize('name', [n if n in ('branched', 'nested_width')
                                  else pytest.param(n, marks=pytest.mark.slow)
                                  for n in models.ARCHITECTURES])
@pytest.mark.parametrize('train', [False, True])
def test_exit_k_is_identical_whether_or_not_later_stages_run(name, train):
  model = nnx.clone(_model(name))
  full = nnx.clone(model)(X, train=train)
  for k in range(model.num_exits):
    partial = nnx.clone(model)
    carry = models.initial_carry(X)
    for j in range(k + 1):
      carry, logits = partial.stage(j, carry, train)
    np.testing.assert_array_equal(logits, full[k])


@pytest.mark.parametrize('name', ['nested_width', 'nested_depth', 'branched'])
def test_exit_k_ignores_the_parameters_of_later_stages(name):
  model = nnx.clone(_model(name))
  base = model(X)
  last = model.num_exits - 1
  state = nnx.state(model.stages[last], nnx.Param)
  nnx.update(model.stages[last], jax.tree.map(lambda p: p + 1.0, state))
  changed = model(X)
  np.testing.assert_array_equal(changed[:last], base[:last])
  assert not np.array_equal(changed[last], base[last])


@pytest.mark.parametrize('name', [pytest.param('nested_width', marks=pytest.mark.slow), 'branched'])
def test_staged_nnx_gradients_equal_the_plain_per_exit_jacobian(name):
  model = nnx.clone(_model(name))
  reference = nnx.clone(model)
  grads, losses, _ = nnx.jit(aj.nnx_staged_exit_jacobian)(model, X, Y)
  graphdef, params, rest = nnx.split(reference, nnx.Param, ...)

  def all_losses(params):
    merged = nnx.merge(graphdef, params, rest)
    return aj.exit_cross_entropy(merged(X, train=True), Y)

  want, want_losses, _ = jax.jit(aj.exit_jacobian, static_argnums=0)(all_losses, params)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
  assert jax.tree.structure(grads) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Train mode moved the BatchNorm statistics once, as an ordinary step does.
  assert not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(nnx.state(model, nnx.BatchStat)),
      jax.tree.leaves(nnx.state(reference, nnx.BatchStat))))


@pytest.mark.slow  # the quick suite runs the same training in docs/guides/your_network.md
def test_osgd_inside_nnx_optimizer_trains_under_nnx_jit():
  model = nnx.clone(_model('nested_width'))
  optimizer = nnx.Optimizer(model, aj.osgd(0.05), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    grads, losses, _ = aj.nnx_staged_exit_jacobian(model, X, Y)
    optimizer.update(model, grads)
    return losses

  first = step(model, optimizer)
  for _ in range(15):
    last = step(model, optimizer)
  assert np.all(np.asarray(last) < np.asarray(first))


def test_user_nnx_stages_in_the_engine():
  class Block(nnx.Module):
    def __init__(self, n, rngs):
      self.body = nnx.Linear(n, 8, rngs=rngs)
      self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, h):
      h = jnp.tanh(self.body(h))
      return h, self.head(h)

  rngs = nnx.Rngs(0)
  blocks = [Block(5, rngs), Block(8, rngs)]
  x = jax.random.normal(jax.random.key(2), (10, 5))
  y = jnp.arange(10) % 3
  stages, params, states = aj.nnx_stages(blocks)
  jac, losses, _ = jax.jit(lambda p, s: aj.staged_jacobian(
      stages, p, x, lambda k, logits: aj.exit_cross_entropy(logits[None], y)[0], s))(
          params, states)

  def all_losses(params):
    h, out = x, []
    for block, p in zip(blocks, params):
      graphdef, _, rest = nnx.split(block, nnx.Param, ...)
      h, logits = nnx.merge(graphdef, p, rest)(h)
      out.append(logits)
    return aj.exit_cross_entropy(jnp.stack(out), y)

  want, want_losses, _ = jax.jit(lambda p: aj.exit_jacobian(all_losses, p))(params)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
  assert jax.tree.structure(list(jac)) == jax.tree.structure(list(want))
  for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
