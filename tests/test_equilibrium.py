"""Gradient equilibrium: against the paper's rescaling at the junctions of a branched network."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import anytime_jax as aj


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _rescale(x, scale):
  return x


_rescale.defvjp(lambda x, scale: (x, None), lambda scale, _, g: (g * scale,))


def _branched_logits(params, x, junctions):
  """K stages of a trunk, each with its classifier; ``junctions``: the paper's rescaling."""
  h, logits, k = x, [], len(params['trunk'])
  for i, (w, head) in enumerate(zip(params['trunk'], params['heads'])):
    h = jnp.tanh(h @ w)
    if junctions:
      h = _rescale(h, 1.0 / (k - i))
    logits.append(h @ head)
    if junctions:
      h = _rescale(h, float(k - i - 1))
  return jnp.stack(logits)


def test_per_parameter_scaling_is_the_papers_junction_rescaling():
  rng = np.random.default_rng(0)
  params = {'trunk': [jnp.asarray(rng.normal(size=(5, 5)) / 2, jnp.float32) for _ in range(3)],
            'heads': [jnp.asarray(rng.normal(size=(5, 4)), jnp.float32) for _ in range(3)]}
  x = jnp.asarray(rng.normal(size=(16, 5)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, 16))
  loss = lambda p, junctions: jnp.sum(aj.exit_cross_entropy(_branched_logits(p, x, junctions), y))
  want = jax.jit(jax.grad(loss), static_argnums=1)(params, True)
  plain = jax.jit(jax.grad(loss), static_argnums=1)(params, False)
  jac, _, _ = jax.jit(lambda p: aj.exit_jacobian(
      lambda q: aj.exit_cross_entropy(_branched_logits(q, x, False), y), p))(params)
  tx = optax.chain(aj.gradient_equilibrium(), aj.sum_exits())
  got, _ = tx.update(jac, tx.init(params), params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # It changes the trunk (stage 1 is shared by all 3 exits), not the heads.
  np.testing.assert_allclose(got['heads'][0], plain['heads'][0], rtol=1e-6)
  assert not np.allclose(got['trunk'][0], plain['trunk'][0], rtol=1e-2)


def test_composes_with_orthogonalize_and_keeps_the_exit_axis():
  jac = {'trunk': jnp.array([[2.0, 0.0], [0.0, 4.0]]), 'head2': jnp.array([[0.0], [6.0]])}
  scaled, _ = aj.gradient_equilibrium().update(jac, optax.EmptyState())
  np.testing.assert_allclose(scaled['trunk'], [[1.0, 0.0], [0.0, 2.0]])
  np.testing.assert_allclose(scaled['head2'], [[0.0], [6.0]])
  tx = optax.chain(aj.gradient_equilibrium(), aj.orthogonalize(granularity='leaf'))
  out, _ = jax.jit(tx.update)(jac, tx.init(None))
  np.testing.assert_allclose(out['trunk'], [1.0, 2.0])  # orthogonal already: summed
  with pytest.raises(ValueError, match='exit axis'):
    aj.gradient_equilibrium().update({'w': jnp.ones(())}, optax.EmptyState())
