"""exit_jacobian against jax.jacrev, and OSGD training a small multi-exit problem."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import anytime_jax as aj


class TwoExitMLP(nn.Module):
  """A trunk with an exit after each of its two layers: logits [2, B, C]."""
  classes: int = 3

  @nn.compact
  def __call__(self, x):
    h1 = nn.relu(nn.Dense(16)(x))
    h2 = nn.relu(nn.Dense(16)(h1))
    return jnp.stack([nn.Dense(self.classes)(h1), nn.Dense(self.classes)(h2)])


def _data(n=64, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 4)).astype(np.float32)
  y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
  return jnp.asarray(x), jnp.asarray(y)


def _losses(model):
  def loss_fn(params, x, y):
    logits = model.apply(params, x)
    return jax.vmap(lambda l: optax.softmax_cross_entropy_with_integer_labels(l, y).mean())(logits)
  return loss_fn


@pytest.mark.parametrize('chunk_size', [None, 1, 2])
def test_exit_jacobian_equals_jacrev(chunk_size):
  model = TwoExitMLP()
  x, y = _data()
  params = model.init(jax.random.key(0), x)
  loss_fn = _losses(model)
  jac, losses, _ = jax.jit(lambda p: aj.exit_jacobian(loss_fn, p, x, y, chunk_size=chunk_size))(params)
  want = jax.jacrev(loss_fn)(params, x, y)
  np.testing.assert_allclose(losses, loss_fn(params, x, y), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(want)):
    assert a.shape == b.shape and a.shape[0] == 2
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  # Exit 0 does not reach the second layer or the second head.
  assert not np.any(jac['params']['Dense_1']['kernel'][0])


def test_exit_jacobian_has_aux():
  model = TwoExitMLP()
  x, y = _data()
  params = model.init(jax.random.key(0), x)
  loss_fn = _losses(model)
  jac, losses, aux = aj.exit_jacobian(lambda p, x, y: (loss_fn(p, x, y), {'n': x.shape[0]}),
                                        params, x, y, has_aux=True)
  assert aux == {'n': 64} and losses.shape == (2,)


def test_exit_jacobian_rejects_scalar_loss():
  with pytest.raises(ValueError, match=r'1-D array \[K\]'):
    aj.exit_jacobian(lambda p: jnp.sum(p ** 2), jnp.ones(3))
  with pytest.raises(ValueError, match='chunk_size'):
    aj.exit_jacobian(lambda p: p ** 2, jnp.ones(3), chunk_size=0)


@pytest.mark.parametrize('make_tx', [lambda: aj.osgd(0.1, momentum=0.9),
                                     lambda: optax.chain(aj.orthogonalize(), optax.adam(1e-2))],
                         ids=['osgd', 'orthogonalize+adam'])
def test_osgd_trains_a_two_exit_network(make_tx):
  model = TwoExitMLP()
  x, y = _data(256)
  params = model.init(jax.random.key(1), x)
  loss_fn = _losses(model)
  tx = make_tx()
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    jac, losses, _ = aj.exit_jacobian(loss_fn, params, x, y)
    updates, state = tx.update(jac, state, params)
    return optax.apply_updates(params, updates), state, losses

  initial = loss_fn(params, x, y)
  for _ in range(300):
    params, state, losses = step(params, state)
  final = loss_fn(params, x, y)
  # Chance is log(3) = 1.10 for both exits; the labels are a simple function of
  # two inputs, which both exits learn.
  assert np.all(initial > 0.9)
  assert np.all(final < 0.25), final
  accuracy = (model.apply(params, x).argmax(-1) == y).mean(-1)
  assert np.all(accuracy > 0.9), accuracy


def test_exit_cross_entropy_matches_manual_computation():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 4)), jnp.float32)
  labels = jnp.asarray([0, 3, 1, 1, 2])
  logp = jax.nn.log_softmax(logits, axis=-1)
  want = -np.mean(np.take_along_axis(np.asarray(logp), np.asarray(labels)[None, :, None], -1)[..., 0], axis=1)
  np.testing.assert_allclose(aj.exit_cross_entropy(logits, labels), want, rtol=1e-6)
  with pytest.raises(ValueError, match=r'logits \[K, B, C\] and labels \[B\]'):
    aj.exit_cross_entropy(logits[0], labels)
