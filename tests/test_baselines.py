"""Baseline exit-gradient combinations against reference computations."""

import jax.numpy as jnp
import numpy as np
import pytest

import anytime_jax as aj
from anytime_jax import baselines


def _rows(k, d=12, seed=0):
  return np.random.default_rng(seed).normal(size=(k, d))


def _apply(tx, rows, **extra):
  out, state = tx.update({'w': jnp.asarray(rows, jnp.float32)}, tx.init(None), None, **extra)
  return np.asarray(out['w']), state


def pcgrad_reference(rows, order):
  """Yu et al.'s Algorithm 1 with the given visiting order, in float64."""
  rows = np.asarray(rows, np.float64)
  total = np.zeros(rows.shape[1])
  for i, g in enumerate(rows):
    g = g.copy()
    for j in order:
      if j != i and g @ rows[j] < 0:
        g -= (g @ rows[j]) / (rows[j] @ rows[j]) * rows[j]
    total += g
  return total


def test_sum_and_mean():
  rows = _rows(4)
  np.testing.assert_allclose(_apply(aj.sum_exits(), rows)[0], rows.sum(0), rtol=1e-5)
  np.testing.assert_allclose(_apply(aj.mean_exits(), rows)[0], rows.mean(0), rtol=1e-5)


@pytest.mark.parametrize('seed', range(5))
def test_pcgrad_coefficients_match_the_algorithm(seed):
  rows = _rows(4, seed=seed)
  order = np.random.default_rng(seed + 10).permutation(4)
  gram = jnp.asarray(rows @ rows.T, jnp.float32)
  coeffs = baselines.pcgrad_coefficients(gram, jnp.asarray(order))
  np.testing.assert_allclose(np.asarray(coeffs).sum(0) @ rows, pcgrad_reference(rows, order),
                             rtol=1e-4, atol=1e-4)


def test_pcgrad_transform_two_exits_and_no_conflict():
  rows = np.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting pair
  got, state = _apply(aj.pcgrad(), rows)
  np.testing.assert_allclose(got, pcgrad_reference(rows, [0, 1]), atol=1e-6)
  assert isinstance(state, baselines.PCGradState)
  agree = np.array([[1.0, 0.2], [0.5, 1.0]])
  np.testing.assert_allclose(_apply(aj.pcgrad(), agree)[0], agree.sum(0), atol=1e-6)


@pytest.mark.parametrize('k', [2, 3, 5])
def test_mgda_is_the_min_norm_point(k):
  rows = _rows(k, d=8, seed=k) + 0.5  # correlated, so the minimum is inside the hull
  gram = rows @ rows.T
  a = np.asarray(baselines.min_norm_weights(jnp.asarray(gram, jnp.float32), iterations=500))
  assert np.all(a >= -1e-6) and abs(a.sum() - 1) < 1e-5
  # KKT on the simplex: (G a)_k >= a'Ga for every k, equal where a_k > 0.
  grad, value = gram @ a, a @ gram @ a
  assert np.all(grad >= value - 1e-3 * abs(value) - 1e-4)
  active = a > 1e-3
  np.testing.assert_allclose(grad[active], value, rtol=2e-2, atol=1e-3)
  got, _ = _apply(aj.mgda(iterations=500), rows)
  np.testing.assert_allclose(got, a @ rows, rtol=1e-3, atol=1e-4)


def test_mgda_two_exits_closed_form():
  g1, g2 = np.array([1.0, 0.0]), np.array([0.0, 2.0])
  alpha = np.clip((g2 - g1) @ g2 / np.sum((g1 - g2) ** 2), 0, 1)
  got, _ = _apply(aj.mgda(), np.stack([g1, g2]))
  np.testing.assert_allclose(got, alpha * g1 + (1 - alpha) * g2, atol=1e-5)


def test_adaloss_weights_by_inverse_running_loss():
  rows = _rows(3)
  tx = aj.adaloss(3, decay=0.5)
  state = tx.init(None)
  grads = {'w': jnp.asarray(rows, jnp.float32)}
  first, state = tx.update(grads, state, None, losses=jnp.array([1.0, 2.0, 4.0]))
  np.testing.assert_allclose(first['w'], rows.sum(0), rtol=1e-5)  # no average yet: plain sum
  second, state = tx.update(grads, state, None, losses=jnp.array([3.0, 2.0, 4.0]))
  average = np.array([2.0, 2.0, 4.0])  # 0.5 * [1, 2, 4] + 0.5 * [3, 2, 4]
  w = (1 / np.array([1.0, 2.0, 4.0])) / np.sum(1 / np.array([1.0, 2.0, 4.0])) * 3
  np.testing.assert_allclose(second['w'], w @ rows, rtol=1e-5)
  np.testing.assert_allclose(state.average, average)
  with pytest.raises(ValueError, match='per-exit losses'):
    tx.update(grads, state, None)
