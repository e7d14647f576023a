"""Accumulating per-exit gradients over micro-batches equals one large batch."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import anytime_jax as aj


def _losses(p, x, y):  # three exits, mean over the batch
  a = jnp.tanh(x @ p['w1'])
  b = jnp.tanh(a @ p['w2'])
  c = jnp.tanh(b @ p['w3'])
  return aj.exit_cross_entropy(jnp.stack([a @ p['h'], b @ p['h'], c @ p['h']]), y)


def _problem():
  rng = np.random.default_rng(0)
  params = {k: jnp.asarray(rng.normal(size=s), jnp.float32)
            for k, s in (('w1', (5, 6)), ('w2', (6, 6)), ('w3', (6, 6)), ('h', (6, 4)))}
  x = jnp.asarray(rng.normal(size=(64, 5)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, 64))
  return params, x, y


@pytest.mark.parametrize('make', [lambda: aj.osgd(0.1, momentum=0.9),
                                  lambda: optax.chain(aj.upgrad(), optax.adam(1e-2)),
                                  lambda: optax.chain(aj.adaloss(num_exits=3), optax.sgd(0.1))])
def test_four_micro_batches_step_like_one_batch_four_times_larger(make):
  params, x, y = _problem()
  big = make()
  big_state = big.init(params)
  micro = aj.accumulate_exits(make(), every=4, num_exits=3)
  micro_state = micro.init(params)
  micro_update, big_update = jax.jit(micro.update), jax.jit(big.update)
  jacobian = jax.jit(lambda p, x, y: aj.exit_jacobian(_losses, p, x, y))
  for _ in range(3):  # three steps, so that momentum and the inner state (AdaLoss's) carry over
    jac, losses, _ = jacobian(params, x, y)
    want, big_state = big_update(jac, big_state, params, losses=losses)
    for i in range(4):
      part = slice(16 * i, 16 * (i + 1))
      jac, losses, _ = jacobian(params, x[part], y[part])
      got, micro_state = micro_update(jac, micro_state, params, losses=losses)
      if i < 3:
        assert all(np.all(u == 0) for u in jax.tree.leaves(got))
    for k in want:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-6)
    params = optax.apply_updates(params, want)


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match='every must be a positive integer'):
    aj.accumulate_exits(aj.osgd(0.1), every=0, num_exits=2)
  params, x, y = _problem()
  tx = aj.accumulate_exits(aj.osgd(0.1), every=2, num_exits=4)
  jac, losses, _ = aj.exit_jacobian(_losses, params, x, y)
  with pytest.raises(ValueError, match='num_exits=4.*K=3'):
    tx.update(jac, tx.init(params), params)
  tx = aj.accumulate_exits(aj.osgd(0.1), every=2, num_exits=3)
  with pytest.raises(ValueError, match=r'losses= of shape \(2,\)'):
    tx.update(jac, tx.init(params), params, losses=losses[:2])


def test_multisteps_around_a_combination_is_refused_with_the_fix():
  params, x, y = _problem()
  jac, _, _ = aj.exit_jacobian(_losses, params, x, y)
  tx = optax.MultiSteps(aj.osgd(0.1), every_k_schedule=4)
  with pytest.raises(ValueError, match='no exit axis.*accumulate_exits'):
    tx.update(jac, tx.init(params), params)
