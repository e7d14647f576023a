"""Every combination of per-exit gradients: one harness for the contract, an independent
reference for each method."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize

import anytime_jax as aj
from anytime_jax._src import solvers as solver_internals

FACTORIES = {name: method.factory for name, method in aj.METHODS.items()}
NEEDS_NUM_EXITS = tuple(n for n, m in aj.METHODS.items() if m.needs_num_exits)


def _make(name, num_exits=4, **options):
  """The method with its defaults (plus ``num_exits`` where its state needs it)."""
  if name in NEEDS_NUM_EXITS or options.get('diagnostics'):
    options['num_exits'] = num_exits
  return FACTORIES[name](**options)


METHODS = {name: (lambda name=name: _make(name)) for name in FACTORIES}
# What each method promises about the exits' losses: a direction d with <d, g_k> >= 0 for
# every exit k ('all'), for the first exit ('first': Gram-Schmidt keeps g_1), or nothing.
DESCENT = {name: method.descent for name, method in aj.METHODS.items() if method.descent}


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
@pytest.mark.parametrize('case', ['rank_deficient', 'conflicting', 'zero_exit', 'nearly_collinear'])
def test_hard_gradients_give_the_promised_direction(name, case):
  rows = _rows(2)
  if case == 'rank_deficient':
    rows[2] = 2 * rows[0]
    rows[3] = rows[0] - rows[1]
  elif case == 'conflicting':
    rows[1] = -rows[0] + 0.01 * rows[1]
  elif case == 'nearly_collinear':
    rows[1:] = rows[0] + 1e-3 * rows[1:]
  else:
    rows[1] = 0.0
  tx = _make(name, diagnostics=True)
  out, state = _combined(tx, rows)
  assert np.all(np.isfinite(out)) and np.linalg.norm(out) > 1e-3 * np.linalg.norm(rows, axis=1).max()
  # The direction is the combination the diagnostics report (one group: every leaf is reached
  # by the same exits), so the weights are the method's, not an artefact.
  weights = np.asarray(state.diagnostics.weights)
  assert weights.shape == (2, 4) and not np.any(state.diagnostics.reached[1])  # padding
  np.testing.assert_allclose(out, weights[0] @ rows, rtol=1e-3, atol=1e-4 * np.abs(out).max())
  projections = rows @ out
  tolerance = 1e-3 * np.linalg.norm(rows, axis=1) * np.linalg.norm(out)
  if DESCENT.get(name) == 'all':
    assert np.all(projections >= -tolerance), projections
  elif DESCENT.get(name) == 'first':
    assert projections[0] >= -tolerance[0]


def _branched_jacobian(rows):
  """Per-exit gradients of a two-exit-heads model: ``shared`` reached by all four exits,
  ``head0`` by exit 0 only, ``head2`` by exit 2 only (``rows`` ``[4, 8]``)."""
  rows = jnp.asarray(rows, jnp.float32)
  only = lambda k, part: jnp.zeros_like(part).at[k].set(part[k])
  return {'shared': rows[:, :4], 'head0': only(0, rows[:, 4:6]), 'head2': only(2, rows[:, 6:])}


BRANCHED = {'shared': jnp.zeros(4), 'head0': jnp.zeros(2), 'head2': jnp.zeros(2)}


@pytest.mark.parametrize('name', METHODS)
def test_a_head_moves_along_its_own_exit_gradient(name):
  rows = _rows(70)
  rows[1] = -rows[0] + 0.2 * rows[1]  # conflicts on the shared part pull weights below zero
  rows[3] = 2.0 * rows[0] + 0.1 * rows[3]
  tx = _make(name)
  out, _ = tx.update(_branched_jacobian(rows), tx.init(BRANCHED), BRANCHED,
                     losses=jnp.arange(1.0, 5.0))
  for leaf, k, part in (('head0', 0, slice(4, 6)), ('head2', 2, slice(6, 8))):
    got, g = np.asarray(out[leaf], np.float64), rows[k, part]
    cosine = got @ g / (np.linalg.norm(got) * np.linalg.norm(g))
    assert cosine > 1 - 1e-5, (leaf, got, g)


def test_global_granularity_steps_uphill_on_a_head_and_exits_does_not():
  # Exit 1 leans on exit 0's shared gradient more than exit 0's whole gradient is long, so one
  # Gram-Schmidt over the whole vector gives exit 0 the weight 1 - <g1, g0> / |g0|^2 < 0.
  g0_shared, head, g1_shared = np.array([1.0, 0.0]), np.array([1.0]), np.array([3.0, 1.0])
  jac = {'shared': jnp.asarray(np.stack([g0_shared, g1_shared]), jnp.float32),
         'head0': jnp.asarray([head, [0.0]], jnp.float32)}
  params = {'shared': jnp.zeros(2), 'head0': jnp.zeros(1)}
  by_global, _ = aj.orthogonalize(granularity='global').update(jac, None, params)
  by_exits, _ = aj.orthogonalize().update(jac, None, params)
  w0 = 1 - (g1_shared @ g0_shared) / (g0_shared @ g0_shared + head @ head)
  assert w0 < 0
  np.testing.assert_allclose(by_global['head0'], w0 * head, rtol=1e-5)  # ascent on exit 0's head
  np.testing.assert_allclose(by_exits['head0'], head, rtol=1e-6)
  u1 = g1_shared - (g1_shared @ g0_shared) / (g0_shared @ g0_shared) * g0_shared
  np.testing.assert_allclose(by_exits['shared'], g0_shared + u1, rtol=1e-5)


@pytest.mark.parametrize('name', METHODS)
def test_diagnostics_count_negative_weights_where_an_exit_reaches(name):
  rows = _rows(71)
  rows[1] = 3.0 * rows[0] + 0.1 * rows[1]
  tx = _make(name, diagnostics=True)
  state = tx.init(BRANCHED)
  _, state = tx.update(_branched_jacobian(rows), state, BRANCHED, losses=jnp.arange(1.0, 5.0))
  found = aj.find_diagnostics(optax.chain(optax.identity(), tx).init(BRANCHED))
  assert isinstance(found, aj.CombinationDiagnostics)
  d = state.diagnostics
  reached = np.asarray(d.reached)
  # Three groups reached by {0, 1, 2, 3}, {0} and {2}; the padding reaches nothing.
  assert sorted(map(tuple, reached[reached.any(1)].astype(int))) == [
      (0, 0, 1, 0), (1, 0, 0, 0), (1, 1, 1, 1)]
  weights = np.asarray(d.weights)
  assert bool(d.negative_weight) == bool(np.any((weights < 0) & reached))
  single = reached.sum(1) == 1
  assert np.all(weights[single][reached[single]] > 0)
  full = np.zeros((4, 8))
  full[:, :4], full[0, 4:6], full[2, 6:] = rows[:, :4], rows[0, 4:6], rows[2, 6:]
  np.testing.assert_allclose(d.grad_norms, np.linalg.norm(full, axis=1), rtol=1e-5)


@pytest.mark.parametrize('name', METHODS)
def test_hyperparameters_are_keyword_only(name):
  with pytest.raises(TypeError, match='positional'):
    FACTORIES[name](0.1)


@pytest.mark.parametrize('name', NEEDS_NUM_EXITS)
def test_stateful_methods_reject_another_number_of_exits(name):
  tx = _make(name, num_exits=3)
  with pytest.raises(ValueError, match='num_exits=3.*K=4'):
    tx.update(_jacobian(_rows(0)), tx.init(PARAMS), PARAMS, losses=jnp.ones(4))


def test_a_shape_dependent_partition_groups_the_same_at_init_and_update():
  # Labels from the parameters' shapes: a callable sees parameter-shaped leaves at init and
  # at update (never the [K, ...] updates), so the per-group state fits.
  by_rank = lambda tree: jax.tree.map(lambda p: len(p.shape), tree)
  tx = aj.gradvac(num_exits=4, granularity=by_rank)
  state = tx.init(PARAMS)
  assert state.target.shape == (2, 4, 4)
  _, state = jax.jit(tx.update)(_jacobian(_rows(5)), state, PARAMS)
  assert state.target.shape == (2, 4, 4)
  assert np.any(np.asarray(state.target[0]) != np.asarray(state.target[1]))


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
    aj.gradvac(num_exits=4, granularity='leaf').init(None)


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


def _dual_cone_projection(rows, lower):
  """``J^T v`` with ``v = argmin_{v >= lower} |J^T v|^2``, by SciPy's L-BFGS-B in float64.

  (SciPy's ``lsq_linear`` stops early on nearly collinear rows: 57 % off on one case here.)
  """
  objective = lambda v: (np.sum((v @ rows) ** 2), 2 * rows @ (rows.T @ v))
  v = optimize.minimize(objective, lower, jac=True, bounds=[(b, None) for b in lower],
                        method='L-BFGS-B', options={'gtol': 1e-14, 'ftol': 1e-16,
                                                    'maxiter': 20000}).x
  return v @ rows


@pytest.mark.parametrize('seed,case', [(s, 'conflict') for s in range(4)]
                         + [(s, 'nearly_collinear') for s in range(4)])
def test_upgrad_and_dualproj_at_their_defaults_against_bounded_least_squares(seed, case):
  rows = _rows(seed)
  rows[1] = -rows[0] + 0.3 * rows[1]  # a conflict, so that the projections are active
  if case == 'nearly_collinear':
    rows[2] = rows[0] + 1e-2 * rows[2]
    rows[3] = rows[1] + 1e-3 * rows[3]
  k = len(rows)
  upgrad = np.mean([_dual_cone_projection(rows, np.eye(k)[i]) for i in range(k)], 0)
  dualproj = _dual_cone_projection(rows, np.full(k, 1 / k))
  for tx, reference in ((aj.upgrad(), upgrad), (aj.dualproj(), dualproj)):
    got, _ = _combined(tx, rows)
    np.testing.assert_allclose(got, reference, rtol=2e-3, atol=2e-3 * np.abs(reference).max())
    assert np.all(rows @ got >= -1e-3 * np.linalg.norm(rows, axis=1) * np.linalg.norm(got))


def test_dualproj_beyond_the_exact_solver_uses_projected_gradient():
  rows = np.random.default_rng(80).normal(size=(10, 30))
  rows[1] = -rows[0] + 0.3 * rows[1]
  assert rows.shape[0] > solver_internals.EXACT_BOX_QP_MAX_EXITS
  reference = _dual_cone_projection(rows, np.full(10, 0.1))
  tx = aj.dualproj()  # its tolerance, not a count, decides when it has converged
  got = tx.update({'w': jnp.asarray(rows, jnp.float32)}, tx.init(None))[0]['w']
  np.testing.assert_allclose(got, reference, rtol=1e-2, atol=1e-2 * np.abs(reference).max())


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
  # Our inner solution is as good as SLSQP's: recover w from the weights 1/K + lambda w.
  weights = np.asarray(aj.solvers.cagrad_weights(jnp.asarray(rows @ rows.T, jnp.float32)).weights,
                       np.float64) * (1 + 0.5 ** 2) - 1 / 4
  w = weights / weights.sum()
  reference_w = (reference * (1 + 0.5 ** 2) - rows.mean(0))
  reference_w = np.linalg.lstsq(rows.T, reference_w, rcond=None)[0]
  reference_w /= reference_w.sum()
  assert objective(w) <= objective(reference_w) + 1e-3 * abs(objective(reference_w))


@pytest.mark.parametrize('seed', range(3))
def test_imtl_g_projects_equally_on_every_unit_gradient(seed):
  rows = _rows(seed + 20)
  gram = rows @ rows.T
  a = np.asarray(aj.solvers.imtl_g_weights(jnp.asarray(gram, jnp.float32)).weights, np.float64)
  d = a @ rows
  projections = rows @ d / np.linalg.norm(rows, axis=1)
  np.testing.assert_allclose(projections, projections.mean(), rtol=1e-3)
  assert projections.mean() > 0
  np.testing.assert_allclose(a.sum(), 1.0, rtol=1e-5)
  got, _ = _combined(aj.imtl_g(), rows)
  np.testing.assert_allclose(got, d, rtol=1e-3, atol=1e-4)


def test_imtl_g_never_climbs_every_exit_where_the_papers_normalizer_is_negative():
  rng = np.random.default_rng(7)
  rows = rng.normal(size=(3, 3)) * np.exp(2 * rng.normal(size=(3, 1)))
  gram = rows @ rows.T
  v = np.linalg.solve(gram, np.sqrt(np.diag(gram)))
  assert v.sum() < 0  # the paper's a = v / 1'v would give every exit a negative projection
  a = np.asarray(aj.solvers.imtl_g_weights(jnp.asarray(gram, jnp.float32)).weights, np.float64)
  projections = rows @ (a @ rows) / np.linalg.norm(rows, axis=1)
  assert np.all(projections > 0)
  np.testing.assert_allclose(projections, projections.mean(), rtol=1e-2)
  np.testing.assert_allclose(a, v / abs(v.sum()), rtol=1e-2)


@pytest.mark.parametrize('seed', range(3))
def test_aligned_mtl_makes_the_system_orthogonal_with_equal_norms(seed):
  rows = _rows(seed + 30)
  gram = rows @ rows.T
  values, vectors = np.linalg.eigh(gram)
  balance = np.sqrt(values.min()) * (vectors / np.sqrt(values)) @ vectors.T
  aligned = balance @ rows  # the aligned exit gradients, float64
  np.testing.assert_allclose(aligned @ aligned.T, values.min() * np.eye(4), atol=1e-8 * values.max())
  got, _ = _combined(aj.aligned_mtl(), rows)
  np.testing.assert_allclose(got, aligned.sum(0), rtol=1e-3, atol=1e-4)  # the authors' scale
  mean, _ = _combined(aj.aligned_mtl(scale='mean'), rows)
  np.testing.assert_allclose(mean, aligned.mean(0), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize('seed', range(3))
def test_nash_mtl_solves_the_bargaining_equations(seed):
  rows = _rows(seed + 40)
  rows[1] = -rows[0] + 0.5 * rows[1]
  gram = rows @ rows.T
  normalized = gram / np.linalg.norm(gram) + 1e-6 * np.eye(4)
  a = np.asarray(aj.solvers.nash_mtl_weights(jnp.asarray(gram, jnp.float32)).weights, np.float64)
  assert np.all(a > 0)
  np.testing.assert_allclose(a * (normalized @ a), 1.0, rtol=1e-3)
  # The positive root is the minimizer of a^T G a / 2 - sum log a (other roots are not positive).
  reference = optimize.minimize(
      lambda x: (x @ normalized @ x / 2 - np.log(x).sum(), normalized @ x - 1 / x), np.ones(4),
      jac=True, bounds=[(1e-9, None)] * 4, method='L-BFGS-B', options={'gtol': 1e-12}).x
  np.testing.assert_allclose(a, reference, rtol=1e-3)


def test_nash_mtl_caps_its_weights():
  rows = _rows(45)
  rows[1] = -rows[0]  # exactly opposed: the weights grow towards 1 / sqrt(ridge)
  gram = jnp.asarray(rows @ rows.T, jnp.float32)
  free = np.asarray(aj.solvers.nash_mtl_weights(gram).weights)
  assert free.max() > 100
  capped = np.asarray(aj.solvers.nash_mtl_weights(gram, max_weight=10.0).weights)
  np.testing.assert_allclose(capped, np.minimum(free, 10.0), rtol=1e-6)
  got, _ = _combined(aj.nash_mtl(max_weight=10.0), rows)
  np.testing.assert_allclose(got, capped @ rows, rtol=1e-3, atol=1e-3)


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
  tx = aj.gradvac(num_exits=4, beta=0.3, seed=5)
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
  coeffs = aj.solvers.pcgrad_coefficients(jnp.asarray(rows @ rows.T, jnp.float32), order)
  np.testing.assert_allclose(np.concatenate([np.ravel(got['w']), got['b']]),
                             np.asarray(coeffs).sum(0) @ rows, rtol=1e-4, atol=1e-5)


def _apply(tx, rows, **extra):
  out, state = tx.update({'w': jnp.asarray(rows, jnp.float32)}, tx.init(None), None, **extra)
  return np.asarray(out['w']), state


def _rows_k(k, d=12, seed=0):
  return np.random.default_rng(seed).normal(size=(k, d))


def test_sum_and_mean():
  rows = _rows_k(4)
  np.testing.assert_allclose(_apply(aj.sum_exits(), rows)[0], rows.sum(0), rtol=1e-5)
  np.testing.assert_allclose(_apply(aj.mean_exits(), rows)[0], rows.mean(0), rtol=1e-5)


@pytest.mark.parametrize('seed', range(5))
def test_pcgrad_coefficients_match_the_algorithm(seed):
  rows = _rows_k(4, seed=seed)
  order = np.random.default_rng(seed + 10).permutation(4)
  gram = jnp.asarray(rows @ rows.T, jnp.float32)
  coeffs = aj.solvers.pcgrad_coefficients(gram, jnp.asarray(order))
  np.testing.assert_allclose(np.asarray(coeffs).sum(0) @ rows, pcgrad_reference(rows, order),
                             rtol=1e-4, atol=1e-4)


def test_pcgrad_transform_two_exits_and_no_conflict():
  rows = np.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting pair
  got, state = _apply(aj.pcgrad(), rows)
  np.testing.assert_allclose(got, pcgrad_reference(rows, [0, 1]), atol=1e-6)
  assert isinstance(state, aj.PCGradState)
  agree = np.array([[1.0, 0.2], [0.5, 1.0]])
  np.testing.assert_allclose(_apply(aj.pcgrad(), agree)[0], agree.sum(0), atol=1e-6)


@pytest.mark.parametrize('k', [2, 3, 5])
def test_mgda_is_the_min_norm_point(k):
  rows = _rows_k(k, d=8, seed=k) + 0.5  # correlated, so the minimum is inside the hull
  gram = rows @ rows.T
  a = np.asarray(jax.jit(aj.solvers.min_norm_weights)(jnp.asarray(gram, jnp.float32)).weights)
  assert np.all(a >= -1e-6) and abs(a.sum() - 1) < 1e-5
  # KKT on the simplex: (G a)_k >= a'Ga for every k, equal where a_k > 0.
  grad, value = gram @ a, a @ gram @ a
  assert np.all(grad >= value - 1e-3 * abs(value) - 1e-4)
  active = a > 1e-3
  np.testing.assert_allclose(grad[active], value, rtol=2e-2, atol=1e-3)
  got, _ = _apply(aj.mgda(), rows)
  np.testing.assert_allclose(got, a @ rows, rtol=1e-3, atol=1e-4)


def test_mgda_two_exits_closed_form():
  g1, g2 = np.array([1.0, 0.0]), np.array([0.0, 2.0])
  alpha = np.clip((g2 - g1) @ g2 / np.sum((g1 - g2) ** 2), 0, 1)
  got, _ = _apply(aj.mgda(), np.stack([g1, g2]))
  np.testing.assert_allclose(got, alpha * g1 + (1 - alpha) * g2, atol=1e-5)


def test_adaloss_weights_by_inverse_running_loss():
  rows = _rows_k(3)
  tx = aj.adaloss(num_exits=3, decay=0.5)
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


def test_config_against_the_papers_formula(seed=7):
  rows = _rows_k(4, seed=seed)
  units = rows / np.linalg.norm(rows, axis=1, keepdims=True)
  g_v = np.linalg.pinv(units) @ np.ones(4)  # least-norm vector with units @ g_v = 1
  g_u = g_v / np.linalg.norm(g_v)
  reference = np.sum(rows @ g_u) * g_u
  got, _ = _apply(aj.conflict_free(granularity='global'), rows)
  np.testing.assert_allclose(got, reference, rtol=1e-4, atol=1e-5)
  cosines = units @ got / np.linalg.norm(got)  # the same angle with every exit's gradient
  np.testing.assert_allclose(cosines, cosines[0], rtol=1e-4)


@pytest.mark.parametrize('alpha', [0.5, 1.0, 2.0])
def test_fairgrad_against_the_authors_least_squares(alpha):
  rows = _rows_k(4, seed=11) * 0.5
  gram = rows @ rows.T
  # The authors' solver: least squares on G w - w^(-1/alpha), w >= 0, from 1/K.
  reference = optimize.least_squares(lambda w: gram @ w - np.power(1 / w, 1 / alpha),
                                     np.ones(4) / 4, bounds=(0, np.inf), xtol=1e-15,
                                     ftol=1e-15, gtol=1e-15).x
  w = np.asarray(aj.solvers.fairgrad_weights(jnp.asarray(gram, jnp.float32), alpha).weights)
  np.testing.assert_allclose(w, reference, rtol=2e-3)
  got, _ = _apply(aj.fairgrad(alpha=alpha, granularity='global'), rows)
  np.testing.assert_allclose(got, reference @ rows, rtol=2e-3, atol=1e-4)
  with pytest.raises(ValueError, match='alpha'):
    aj.fairgrad(alpha=0.0)


def test_uncertainty_weighting_by_hand():
  rows = _rows_k(2)
  tx = aj.uncertainty_weighting(num_exits=2, learning_rate=0.1)
  state = tx.init(None)
  grads = {'w': jnp.asarray(rows, jnp.float32)}
  first, state = tx.update(grads, state, None, losses=jnp.array([2.0, 0.5]))
  np.testing.assert_allclose(first['w'], rows.sum(0), rtol=1e-5)  # s = 0: weights 1
  s = -0.1 * (0.5 - np.array([2.0, 0.5]))  # one SGD step on exp(-s) L + s / 2
  np.testing.assert_allclose(state.log_variance, s, rtol=1e-6)
  second, state = tx.update(grads, state, None, losses=jnp.array([1.0, 1.0]))
  np.testing.assert_allclose(second['w'], np.exp(-s) @ rows, rtol=1e-5)


def test_dwa_by_hand():
  rows = _rows_k(3)
  tx = aj.dwa(num_exits=3, temperature=2.0)
  state = tx.init(None)
  grads = {'w': jnp.asarray(rows, jnp.float32)}
  history = ([1.0, 2.0, 4.0], [0.5, 2.0, 2.0], [0.4, 1.0, 2.0], [0.3, 0.9, 1.0])
  outs = []
  for losses in history:
    out, state = tx.update(grads, state, None, losses=jnp.array(losses))
    outs.append(np.asarray(out['w']))
  for out in outs[:2]:
    np.testing.assert_allclose(out, rows.sum(0), rtol=1e-5)  # the first two steps: weights 1
  for t in (2, 3):
    r = np.array(history[t - 1]) / np.array(history[t - 2])
    w = 3 * np.exp(r / 2) / np.exp(r / 2).sum()
    np.testing.assert_allclose(outs[t], w @ rows, rtol=1e-5)
  with pytest.raises(ValueError, match='temperature'):
    aj.dwa(num_exits=3, temperature=0.0)


def test_famo_by_hand():
  rows = _rows_k(3)
  tx = aj.famo(num_exits=3, learning_rate=0.5, weight_decay=0.1)
  state = tx.init(None)
  grads = {'w': jnp.asarray(rows, jnp.float32)}
  first_losses, second_losses = np.array([2.0, 1.0, 0.5]), np.array([1.0, 0.9, 0.45])
  first, state = tx.update(grads, state, None, losses=jnp.asarray(first_losses))
  w = (1 / first_losses) / np.sum(1 / first_losses)  # z uniform: c z_k / L_k
  np.testing.assert_allclose(first['w'], w @ rows, rtol=1e-5)
  second, state = tx.update(grads, state, None, losses=jnp.asarray(second_losses))
  z = np.full(3, 1 / 3)
  delta = np.log(first_losses) - np.log(second_losses)
  xi = -0.5 * ((np.diag(z) - np.outer(z, z)) @ delta + 0.1 * 0.0)  # xi was 0
  z = np.exp(xi) / np.exp(xi).sum()
  assert z[0] < z[2]  # exit 1's loss fell most: its share shrinks
  w = (z / second_losses) / np.sum(z / second_losses)
  np.testing.assert_allclose(state.logits, xi, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(second['w'], w @ rows, rtol=1e-5)
