"""Every Gram weighting: one harness for the contract, an independent reference for each method."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize

import anytime_jax as aj
from anytime_jax import baselines, weightings

METHODS = {
    'sum': aj.sum_exits, 'mean': aj.mean_exits, 'pcgrad': aj.pcgrad, 'mgda': aj.mgda,
    'adaloss': lambda: aj.adaloss(4), 'osgd': aj.orthogonalize, 'upgrad': aj.upgrad,
    'dualproj': aj.dualproj, 'cagrad': aj.cagrad, 'imtl_g': aj.imtl_g,
    'aligned_mtl': aj.aligned_mtl, 'nash_mtl': aj.nash_mtl, 'gradvac': lambda: aj.gradvac(4),
}


def _jacobian(rows, dtype=jnp.float32):
  """Per-exit gradients of a two-leaf model from ``rows`` ``[K, 8]``."""
  rows = jnp.asarray(rows, dtype)
  return {'w': rows[:, :6].reshape(-1, 3, 2), 'b': rows[:, 6:]}


PARAMS = {'w': jnp.zeros((3, 2)), 'b': jnp.zeros(2)}


def _combined(tx, rows, steps=1):
  state = tx.init(PARAMS)
  for _ in range(steps):
    out, state = tx.update(_jacobian(rows), state, PARAMS, losses=jnp.arange(1.0, 5.0))
  return np.concatenate([np.asarray(out['w']).ravel(), np.asarray(out['b'])]), state


def _rows(seed=0, k=4, d=8):
  return np.random.default_rng(seed).normal(size=(k, d))


# ----- the contract, for every method -----

@pytest.mark.parametrize('name', METHODS)
def test_jit_matches_eager_and_keeps_bfloat16(name):
  tx = METHODS[name]()
  rows = _rows(1)
  eager, _ = _combined(tx, rows)
  jac = _jacobian(rows)
  jitted, _ = jax.jit(tx.update)(jac, tx.init(PARAMS), PARAMS, losses=jnp.arange(1.0, 5.0))
  np.testing.assert_allclose(np.concatenate([np.ravel(jitted['w']), jitted['b']]), eager,
                             rtol=1e-4, atol=1e-5)
  low, _ = tx.update(_jacobian(rows, jnp.bfloat16), tx.init(PARAMS), PARAMS,
                     losses=jnp.arange(1.0, 5.0))
  assert all(leaf.dtype == jnp.bfloat16 for leaf in jax.tree.leaves(low))


@pytest.mark.parametrize('name', METHODS)
@pytest.mark.parametrize('case', ['rank_deficient', 'conflicting', 'zero_exit'])
def test_hard_gradients_give_finite_directions(name, case):
  rows = _rows(2)
  if case == 'rank_deficient':
    rows[2] = 2 * rows[0]
    rows[3] = rows[0] - rows[1]
  elif case == 'conflicting':
    rows[1] = -rows[0] + 0.01 * rows[1]
  else:
    rows[1] = 0.0
  tx = optax.chain(METHODS[name](), optax.sgd(0.1, momentum=0.9))
  out, _ = _combined(tx, rows, steps=2)
  assert np.all(np.isfinite(out))


@pytest.mark.parametrize('name', METHODS)
def test_rejects_gradients_without_the_exit_axis(name):
  tx = METHODS[name]()
  with pytest.raises(ValueError, match='exit axis|\\[K, \\*param.shape\\]'):
    tx.update(PARAMS, tx.init(PARAMS), PARAMS, losses=jnp.ones(4))


def test_a_user_weighting_in_one_line():
  rows = _rows(3)
  tx = aj.gram_weighting(lambda g: jax.lax.rsqrt(jnp.diagonal(g)), granularity='leaf')
  out, _ = tx.update(_jacobian(rows), tx.init(PARAMS), PARAMS)
  w = rows[:, :6] / np.linalg.norm(rows[:, :6], axis=1, keepdims=True)  # leaf w: its own norms
  np.testing.assert_allclose(np.ravel(out['w']), w.sum(0), rtol=1e-5)
  with pytest.raises(ValueError, match='pass the parameters'):
    aj.gradvac(4, granularity='leaf').init(None)


def test_inject_hyperparams_changes_cagrads_radius():
  rows = _rows(4)
  tx = optax.inject_hyperparams(aj.cagrad)(c=0.5)
  state = tx.init(PARAMS)
  first, state = tx.update(_jacobian(rows), state, PARAMS)
  state.hyperparams['c'] = jnp.asarray(0.0)
  second, _ = tx.update(_jacobian(rows), state, PARAMS)
  np.testing.assert_allclose(np.ravel(second['w']), rows[:, :6].mean(0), rtol=1e-4)  # c=0: mean
  assert not np.allclose(np.ravel(first['w']), np.ravel(second['w']))


# ----- each method against an independent reference -----

def _dual_cone_projection(rows, lower):
  """``J^T v`` with ``v = argmin_{v >= lower} |J^T v|^2``, by SciPy's bounded least squares."""
  k = len(rows)
  v = optimize.lsq_linear(rows.T, np.zeros(rows.shape[1]), bounds=(lower, np.full(k, np.inf)),
                          tol=1e-12).x
  return v @ rows


@pytest.mark.parametrize('seed', range(4))
def test_upgrad_and_dualproj_against_bounded_least_squares(seed):
  rows = _rows(seed)
  rows[1] = -rows[0] + 0.3 * rows[1]  # a conflict, so that the projections are active
  k = len(rows)
  upgrad = np.mean([_dual_cone_projection(rows, np.eye(k)[i]) for i in range(k)], 0)
  dualproj = _dual_cone_projection(rows, np.full(k, 1 / k))
  for tx, reference in ((aj.upgrad(iterations=3000), upgrad),
                        (aj.dualproj(iterations=3000), dualproj)):
    got, _ = _combined(tx, rows)
    np.testing.assert_allclose(got, reference, rtol=2e-3, atol=2e-3 * np.abs(reference).max())
    assert np.all(rows @ got >= -1e-3 * np.linalg.norm(rows, axis=1) * np.linalg.norm(got))


def _cagrad_reference(rows, c=0.5):
  """The authors' algorithm (scipy SLSQP over the simplex), in float64."""
  gram = rows @ rows.T
  k = len(rows)
  mean = np.full(k, 1 / k)
  radius = c * np.sqrt(mean @ gram @ mean)
  objective = lambda w: w @ gram @ mean + radius * np.sqrt(w @ gram @ w + 1e-12)
  w = optimize.minimize(objective, mean, bounds=[(0, 1)] * k, method='SLSQP', tol=1e-12,
                        constraints={'type': 'eq', 'fun': lambda w: 1 - w.sum()}).x
  lam = radius / np.sqrt(w @ gram @ w)
  return (mean + lam * w) @ rows / (1 + c ** 2), objective


@pytest.mark.parametrize('seed', range(4))
def test_cagrad_against_the_authors_algorithm(seed):
  rows = _rows(seed + 10)
  rows[2] = -0.8 * rows[0] + 0.5 * rows[2]
  reference, objective = _cagrad_reference(rows)
  got, _ = _combined(aj.cagrad(), rows)
  np.testing.assert_allclose(got, reference, rtol=2e-2, atol=2e-2 * np.abs(reference).max())
  gram = rows @ rows.T
  w = np.asarray(weightings.cagrad_weights(jnp.asarray(gram, jnp.float32)))
  assert np.all(np.isfinite(w))


@pytest.mark.parametrize('seed', range(3))
def test_imtl_g_projects_equally_on_every_unit_gradient(seed):
  rows = _rows(seed + 20)
  gram = rows @ rows.T
  a = np.asarray(weightings.imtl_g_weights(jnp.asarray(gram, jnp.float32)), np.float64)
  d = a @ rows
  projections = rows @ d / np.linalg.norm(rows, axis=1)
  np.testing.assert_allclose(projections, projections.mean(), rtol=1e-3)
  np.testing.assert_allclose(a.sum(), 1.0, rtol=1e-5)
  got, _ = _combined(aj.imtl_g(), rows)
  np.testing.assert_allclose(got, d, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize('seed', range(3))
def test_aligned_mtl_makes_the_system_orthogonal_with_equal_norms(seed):
  rows = _rows(seed + 30)
  gram = rows @ rows.T
  values, vectors = np.linalg.eigh(gram)
  balance = np.sqrt(values.min()) * (vectors / np.sqrt(values)) @ vectors.T
  aligned = balance @ rows  # the aligned exit gradients, float64
  np.testing.assert_allclose(aligned @ aligned.T, values.min() * np.eye(4), atol=1e-8 * values.max())
  got, _ = _combined(aj.aligned_mtl(), rows)
  np.testing.assert_allclose(got, aligned.mean(0), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize('seed', range(3))
def test_nash_mtl_solves_the_bargaining_equations(seed):
  rows = _rows(seed + 40)
  rows[1] = -rows[0] + 0.5 * rows[1]
  gram = rows @ rows.T
  normalized = gram / np.linalg.norm(gram) + 1e-6 * np.eye(4)
  a = np.asarray(weightings.nash_mtl_weights(jnp.asarray(gram, jnp.float32)), np.float64)
  assert np.all(a > 0)
  np.testing.assert_allclose(a * (normalized @ a), 1.0, rtol=1e-3)
  # The positive root is the minimizer of a^T G a / 2 - sum log a (other roots are not positive).
  reference = optimize.minimize(
      lambda x: (x @ normalized @ x / 2 - np.log(x).sum(), normalized @ x - 1 / x), np.ones(4),
      jac=True, bounds=[(1e-9, None)] * 4, method='L-BFGS-B', options={'gtol': 1e-12}).x
  np.testing.assert_allclose(a, reference, rtol=1e-3)


def _gradvac_reference(rows, target, order, beta):
  rows = np.asarray(rows, np.float64)
  k = len(rows)
  target = target.copy()
  out = np.zeros(rows.shape[1])
  for i in range(k):
    g = rows[i].copy()
    for j in order:
      if j == i:
        continue
      phi = g @ rows[j] / (np.linalg.norm(g) * np.linalg.norm(rows[j]))
      t = target[i, j]
      if phi < t:
        g = g + np.linalg.norm(g) * (t * np.sqrt(1 - phi ** 2) - phi * np.sqrt(1 - t ** 2)) / (
            np.linalg.norm(rows[j]) * np.sqrt(1 - t ** 2)) * rows[j]
      target[i, j] = (1 - beta) * t + beta * phi
    out += g
  return out, target


def test_gradvac_against_its_algorithm_over_three_steps():
  tx = aj.gradvac(4, beta=0.3, seed=5)
  state = tx.init(PARAMS)
  key, target = jax.random.key(5), np.zeros((4, 4))
  for step in range(3):
    rows = _rows(50 + step)
    rows[3] = -rows[0] + 0.2 * rows[3]
    got, state = tx.update(_jacobian(rows), state, PARAMS)
    key, use = jax.random.split(key)
    order = np.asarray(jax.random.permutation(use, 4))
    expected, target = _gradvac_reference(rows, target, order, 0.3)
    np.testing.assert_allclose(np.concatenate([np.ravel(got['w']), got['b']]), expected,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state.target[0], target, atol=1e-5)


def test_pcgrad_draws_its_order_from_a_key_it_does_not_keep():
  rows = _rows(60)
  rows[1] = -rows[0] + 0.1 * rows[1]
  rows[2] = -rows[0] + 0.2 * rows[2]
  tx = aj.pcgrad(seed=3)
  state = tx.init(PARAMS)
  got, state = tx.update(_jacobian(rows), state, PARAMS)
  kept, used = jax.random.split(jax.random.key(3))
  assert np.array_equal(jax.random.key_data(state.key), jax.random.key_data(kept))
  order = jnp.asarray(jax.random.permutation(used, 4))
  coeffs = baselines.pcgrad_coefficients(jnp.asarray(rows @ rows.T, jnp.float32), order)
  np.testing.assert_allclose(np.concatenate([np.ravel(got['w']), got['b']]),
                             np.asarray(coeffs).sum(0) @ rows, rtol=1e-4, atol=1e-5)
