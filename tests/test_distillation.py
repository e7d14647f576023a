"""Distillation from the last exit: the loss by hand, and the training step against jax.grad."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import anytime_jax as aj
from anytime_jax import models


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_loss_against_numpy():
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(size=(5, 4)), rng.normal(size=(5, 4)) * 3
  labels = rng.integers(0, 4, 5)
  tau, beta = 2.0, 0.3
  ce = -_log_softmax(student)[np.arange(5), labels].mean()
  t, s = _log_softmax(teacher / tau), _log_softmax(student / tau)
  kl = (np.exp(t) * (t - s)).sum(-1).mean()
  got = aj.distillation_loss(jnp.asarray(student, jnp.float32),
                             (jnp.asarray(labels), jnp.asarray(teacher, jnp.float32)),
                             weight=beta, temperature=tau)
  np.testing.assert_allclose(got, ce + beta * tau ** 2 * kl, rtol=1e-5)


def test_the_teacher_itself_gets_only_its_cross_entropy():
  logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]])
  labels = jnp.array([0, 1])
  loss = lambda z: aj.distillation_loss(z, (labels, z), weight=0.7, temperature=3.0)
  ce = lambda z: aj.exit_cross_entropy(z[None], labels)[0]
  np.testing.assert_allclose(loss(logits), ce(logits), rtol=1e-6)
  np.testing.assert_allclose(jax.grad(loss)(logits), jax.grad(ce)(logits), atol=1e-6)


def test_train_step_with_distillation_is_sgd_on_the_distilled_losses():
  network = models.create('branched', num_classes=3, num_exits=3, width=2, num_levels=1)
  x = jax.random.normal(jax.random.key(1), (8, 4, 4, 1))
  y = jnp.arange(8) % 3
  kd = aj.Distillation(weight=0.5, temperature=2.0)
  tx = optax.chain(aj.sum_exits(), optax.sgd(0.1))
  state = aj.create_train_state(network, tx, jax.random.key(0), x)
  new, metrics = jax.jit(aj.make_train_step(
      network, tx, gradients=aj.staged_gradients(distillation=kd)))(state, x, y)

  def total(params):
    logits, moved = network.apply({'params': params, 'batch_stats': state.batch_stats}, x,
                                  train=True, mutable=['batch_stats'])
    losses = jnp.stack([aj.distillation_loss(l, (y, logits[-1]), kd.weight, kd.temperature)
                        for l in logits])
    return losses.sum(), (losses, moved['batch_stats'])

  grads, (losses, stats) = jax.jit(jax.grad(total, has_aux=True))(state.params)
  want = jax.tree.map(lambda p, g: p - 0.1 * g, state.params, grads)
  for a, b in zip(jax.tree.leaves(new.params), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(metrics['exit_losses'], losses, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(new.batch_stats), jax.tree.leaves(stats)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # moved once, not twice
  ce = aj.exit_cross_entropy(jax.jit(lambda v: network.apply(v, x, train=True,
                                                            mutable=['batch_stats']))(
      {'params': state.params, 'batch_stats': state.batch_stats})[0], y)
  assert np.all(np.asarray(metrics['exit_losses'][:-1]) > np.asarray(ce[:-1]))  # KL terms added
  np.testing.assert_allclose(metrics['exit_losses'][-1], ce[-1], rtol=1e-5)


def test_distillation_needs_the_staged_per_exit_path():
  network = models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  for options in (dict(per_exit=False), dict(engine='vmap')):
    with pytest.raises(ValueError, match='distillation needs per-exit gradients'):
      aj.make_train_step(network, optax.sgd(0.1), distillation=aj.Distillation(), **options)
  with pytest.raises(ValueError, match='needs per-exit gradients whose losses are the plain'):
    tx = optax.chain(aj.amortize(aj.orthogonalize(granularity='global', diagnostics=True,
                                                  num_exits=2), every=2, num_exits=2),
                     optax.sgd(0.1))
    x = jnp.zeros((2, 4, 4, 1))
    state = aj.create_train_state(network, tx, jax.random.key(0), x)
    aj.make_train_step(network, tx, gradients=aj.staged_gradients(
        distillation=aj.Distillation()))(state, x, jnp.zeros(2, jnp.int32))
