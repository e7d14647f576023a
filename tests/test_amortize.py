"""Combination weights refreshed every N steps: N=1 is the plain step, refreshes are the method's,
the steps between are the gradient of the weighted loss, one compiled program, resumable."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import anytime_jax as aj
from anytime_jax import models

X = jax.random.normal(jax.random.key(1), (8, 8, 8, 1))
Y = jnp.arange(8) % 3
K = 3


@functools.lru_cache(maxsize=None)
def _network():
  network = models.create('branched', num_classes=3, num_exits=K, width=2, num_levels=1)
  return network, models.init_variables(network, jax.random.key(0), X)


def _osgd_global():
  return aj.orthogonalize(granularity='global', diagnostics=True, num_exits=K)


def _state(tx):
  _, variables = _network()
  return aj.TrainState(jnp.zeros((), jnp.int32), variables['params'], variables['batch_stats'],
                       tx.init(variables['params']))


def _run(tx, steps):
  network, _ = _network()
  step = jax.jit(aj.make_train_step(network, tx))
  state, trace = _state(tx), []
  for _ in range(steps):
    state, metrics = step(state, X, Y)
    trace.append(state)
  return step, trace


def test_every_step_refreshed_is_the_plain_combination():
  plain = optax.chain(_osgd_global(), optax.sgd(0.1, momentum=0.9))
  amortized = optax.chain(aj.amortize(_osgd_global(), every=1, num_exits=K),
                          optax.sgd(0.1, momentum=0.9))
  _, want = _run(plain, 3)
  _, got = _run(amortized, 3)
  # The same arithmetic; inside lax.cond XLA fuses it differently, so equal to float32 rounding.
  for a, b in zip(jax.tree.leaves(got[-1].params), jax.tree.leaves(want[-1].params)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_refresh_steps_take_the_methods_weights_and_the_rest_the_weighted_loss():
  network, _ = _network()
  tx = optax.chain(aj.amortize(_osgd_global(), every=3, num_exits=K), optax.sgd(1.0))
  step, trace = _run(tx, 4)
  states = [_state(tx), *trace]
  for t in range(4):
    before, after = states[t], states[t + 1]
    variables = {'params': before.params, 'batch_stats': before.batch_stats}
    amortized = aj.find_amortized(before.opt_state)
    assert bool(amortized.refresh) == (t % 3 == 0)
    if t % 3 == 0:  # the unamortized method on this step's per-exit gradients
      jac, _, _ = aj.staged_exit_jacobian(network, variables, X, Y)
      _, plain_state = _osgd_global().update(jac, _osgd_global().init(before.params),
                                             before.params)
      np.testing.assert_allclose(aj.find_amortized(after.opt_state).weights,
                                 aj.find_diagnostics(plain_state).weights[0], rtol=1e-5)
      continue
    weights = amortized.weights
    want = aj.weighted_loss_gradient(network, variables, X, Y, weights).grads
    moved = jax.tree.map(lambda a, b: a - b, before.params, after.params)  # sgd(1.0): -update
    for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(want)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(aj.find_amortized(after.opt_state).weights, weights)
  assert step._cache_size() == 1  # one program; the device chose the branch


@pytest.mark.slow  # CI
def test_a_run_resumed_mid_period_continues_exactly():
  network, _ = _network()
  tx = optax.chain(aj.amortize(_osgd_global(), every=4, num_exits=K),
                   optax.sgd(0.1, momentum=0.9))
  step, straight = _run(tx, 6)
  # Two steps in (mid-period), the state leaves the device and comes back, as a checkpoint does.
  resumed = jax.tree.map(lambda a: jnp.asarray(np.asarray(a)) if not jax.dtypes.issubdtype(
      a.dtype, jax.dtypes.prng_key) else a, straight[1])
  for _ in range(4):
    resumed, _ = step(resumed, X, Y)
  for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(straight[-1].params)):
    np.testing.assert_array_equal(a, b)


def test_weighted_loss_gradient_by_hand():
  network, variables = _network()
  weights = jnp.array([0.5, -1.0, 2.0])
  per_exit, losses, _ = aj.staged_exit_jacobian(network, variables, X, Y)
  got, got_losses, _ = aj.weighted_loss_gradient(network, variables, X, Y, weights)
  np.testing.assert_allclose(got_losses, losses, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(per_exit)):
    np.testing.assert_allclose(a, jnp.tensordot(weights, b, axes=1), rtol=1e-4, atol=1e-6)


def test_bad_use_is_refused():
  with pytest.raises(ValueError, match='every must be a positive integer'):
    aj.amortize(_osgd_global(), every=0, num_exits=K)
  with pytest.raises(ValueError, match='diagnostics=True'):
    aj.amortize(aj.orthogonalize(granularity='global'), every=2, num_exits=K).init(
        {'w': jnp.zeros(2)})
  tx = aj.amortize(aj.orthogonalize(granularity='leaf', diagnostics=True, num_exits=2), every=2,
                   num_exits=2)
  params = {'a': jnp.zeros(2), 'b': jnp.zeros(3)}
  jac = {'a': jnp.ones((2, 2)), 'b': jnp.ones((2, 3))}
  with pytest.raises(ValueError, match="granularity='global'"):
    tx.update(jac, tx.init(params), params)
  network, _ = _network()
  step = aj.make_train_step(network, optax.chain(aj.amortize(_osgd_global(), every=2,
                                                             num_exits=K), optax.sgd(0.1)),
                            gradients=aj.summed_gradients())
  with pytest.raises(ValueError, match='needs per-exit gradients whose losses are the plain'):
    step(_state(optax.chain(aj.amortize(_osgd_global(), every=2, num_exits=K), optax.sgd(0.1))),
         X, Y)


@pytest.mark.slow  # CI
def test_the_callers_step_count_picks_the_same_steps_as_the_device():
  network, _ = _network()
  tx = optax.chain(aj.amortize(_osgd_global(), every=2, num_exits=K), optax.sgd(0.1))
  _, by_device = _run(tx, 5)
  step = jax.jit(aj.make_train_step(network, tx), static_argnames='refresh')
  state = _state(tx)
  for i in range(5):
    state, _ = step(state, X, Y, refresh=i % 2 == 0)
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(by_device[-1].params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  assert step._cache_size() == 2  # two programs, chosen on the host without reading the device
