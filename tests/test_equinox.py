"""Equinox models and pytrees with None leaves, through every combination."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import anytime_jax as aj

eqx = pytest.importorskip('equinox')


class TwoExits(eqx.Module):
  body: eqx.nn.Linear
  deeper: eqx.nn.Linear
  heads: tuple
  activation: callable = eqx.field(static=True, default=jax.nn.relu)

  def __init__(self, key):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    self.body = eqx.nn.Linear(4, 16, key=k1)
    self.deeper = eqx.nn.Linear(16, 16, key=k2)
    self.heads = (eqx.nn.Linear(16, 3, key=k3), eqx.nn.Linear(16, 3, key=k4))

  def __call__(self, x):  # logits [K=2, C] of one example
    h1 = self.activation(self.body(x))
    h2 = self.activation(self.deeper(h1))
    return jnp.stack([self.heads[0](h1), self.heads[1](h2)])


def _losses(params, static, x, y):
  model = eqx.combine(params, static)
  logits = jax.vmap(model)(x).transpose(1, 0, 2)  # [K, B, C]
  return aj.exit_cross_entropy(logits, y)


@pytest.mark.parametrize('make', [aj.orthogonalize, aj.sum_exits, aj.pcgrad, aj.upgrad,
                                  lambda: aj.gradvac(num_exits=2)])
def test_equinox_model_trains_through_filtered_pytrees(make):
  model = TwoExits(jax.random.key(0))
  params, static = eqx.partition(model, eqx.is_array)
  x = jax.random.normal(jax.random.key(1), (32, 4))
  y = (x[:, 0] > 0).astype(jnp.int32) + (x[:, 1] > 0)
  tx = optax.chain(make(), optax.sgd(0.1))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    jac, losses, _ = aj.exit_jacobian(_losses, params, static, x, y)
    updates, opt_state = tx.update(jac, opt_state, params)
    return eqx.apply_updates(params, updates), opt_state, losses

  first = None
  for _ in range(30):
    params, opt_state, losses = step(params, opt_state)
    first = losses if first is None else first
  assert jax.tree.structure(params) == jax.tree.structure(eqx.partition(model, eqx.is_array)[0])
  assert np.all(np.asarray(losses) < np.asarray(first))


def test_none_leaves_are_skipped_and_match_the_filled_tree():
  rows = np.random.default_rng(0).normal(size=(3, 6))
  with_none = {'a': jnp.asarray(rows[:, :4].reshape(3, 2, 2)), 'frozen': None,
               'b': jnp.asarray(rows[:, 4:])}
  params = {'a': jnp.zeros((2, 2)), 'frozen': None, 'b': jnp.zeros(2)}
  tx = aj.orthogonalize(granularity='global')
  out, _ = tx.update(with_none, tx.init(params), params)
  assert out['frozen'] is None
  np.testing.assert_allclose(np.concatenate([np.ravel(out['a']), out['b']]),
                             aj.orthogonalize(granularity='global').update(
                                 {'w': jnp.asarray(rows)}, optax.EmptyState())[0]['w'],
                             rtol=1e-5)
