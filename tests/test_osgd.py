"""orthogonalize / osgd against a NumPy Gram-Schmidt, their properties and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import anytime_jax as aj
from anytime_jax.solvers import gram_schmidt_coefficients, gram_schmidt_vectors
from tests import reference


def _tree(rows, split=(7, 12)):
  """Splits [K, D] rows into a three-leaf pytree of per-exit gradients."""
  rows = jnp.asarray(rows, jnp.float32)
  a, b = split
  k = rows.shape[0]
  return {'w': rows[:, :a], 'conv': {'kernel': rows[:, a:b].reshape(k, 1, b - a)},
          'b': rows[:, b:]}


def _flat(tree, k=None):
  return np.concatenate([np.ravel(tree['w']), np.ravel(tree['conv']['kernel']),
                         np.ravel(tree['b'])])


def _apply(rows, **options):
  tx = aj.orthogonalize(**options)
  out, _ = tx.update(_tree(rows), tx.init(None))
  return out


def _leaf_reference(rows, split=(7, 12), **options):
  a, b = split
  return np.concatenate([reference.osgd_direction(part, **options)
                         for part in (rows[:, :a], rows[:, a:b], rows[:, b:])])


def _adversarial(kind, k, rng, d=20):
  rows = rng.normal(size=(k, d))
  if kind == 'zero_row' and k > 1:
    rows[k // 2] = 0.0
  elif kind == 'duplicate' and k > 1:
    rows[-1] = rows[0]
  elif kind == 'scaled_collinear' and k > 1:
    rows[1] = -3.0 * rows[0]
  elif kind == 'nearly_collinear' and k > 1:
    rows[-1] = rows[0] + 1e-4 * rng.normal(size=d)
  elif kind == 'all_zero':
    rows[:] = 0.0
  elif kind == 'first_zero':
    rows[0] = 0.0
  return rows


KINDS = ['random', 'zero_row', 'duplicate', 'scaled_collinear', 'nearly_collinear',
         'all_zero', 'first_zero']


@pytest.mark.parametrize('k,algorithm,granularity',
                         [(k, 'gram', g) for k in range(1, 9) for g in ('global', 'leaf', 'exits')]
                         + [(k, 'vectors', g) for k in (1, 3, 8) for g in ('global', 'leaf')])
def test_matches_numpy_reference(k, granularity, algorithm):
  tx = aj.orthogonalize(granularity=granularity, algorithm=algorithm)
  # The Gram path loops in lax, which eager mode compiles on every call: compile it once for
  # the seven kinds of rows (one shape). The vectors path unrolls in Python: cheap eagerly.
  update = jax.jit(tx.update) if algorithm == 'gram' else tx.update
  for kind in KINDS:
    rows = _adversarial(kind, k, np.random.default_rng(100 * k + KINDS.index(kind)))
    got = _flat(update(_tree(rows), tx.init(None))[0])
    # Every leaf of these rows is reached by the same exits: 'exits' is one group, as 'global'.
    want = _leaf_reference(rows) if granularity == 'leaf' else reference.osgd_direction(rows)
    assert np.all(np.isfinite(got)), kind
    # The Gram formulation in float32 resolves a direction to ~sqrt(eps_f32) of
    # the gradients' scale; compare at that scale.
    scale = max(1.0, np.abs(rows).max())
    np.testing.assert_allclose(got, want, atol=2e-3 * scale, rtol=1e-4, err_msg=kind)


@pytest.mark.parametrize('rescale', ['exit_norm', 'sum_norm'])
@pytest.mark.parametrize('granularity', ['global', 'leaf'])
@pytest.mark.parametrize('algorithm', ['gram', 'vectors'])
def test_rescale_matches_reference(rescale, granularity, algorithm):
  rows = np.random.default_rng(3).normal(size=(4, 20))
  rows[2] = rows[0] + 0.5 * rows[2]  # a conflict-free but correlated pair
  got = _flat(_apply(rows, granularity=granularity, rescale=rescale, algorithm=algorithm))
  want = (reference.osgd_direction(rows, rescale=rescale) if granularity == 'global'
          else _leaf_reference(rows, rescale=rescale))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# Gram-Schmidt from a float32 Gram matrix: accuracy eps_f32 * cond(G); on the vectors: eps_f32.
# Measured worst over these cases: gram 7.8e-5 and 1.3e-2, vectors 7.9e-8 and 8.1e-9.
BOUNDS = {'gram': {'direction': 5e-4, 'cosine': 5e-2},
          'vectors': {'direction': 1e-6, 'cosine': 1e-6}}


@pytest.mark.parametrize('algorithm', ['gram', 'vectors'])
@pytest.mark.parametrize('k', [4, 8])
@pytest.mark.parametrize('residual', [4e-5, 1e-4, 1e-3, 1e-2])
def test_accuracy_against_float64_mgs_for_nearly_collinear_exits(algorithm, k, residual):
  # Exit gradients sharing one direction, each off it by a squared relative residual between
  # eps = 1e-5 and 1e-2: the regime where later exits keep only a sliver of their gradient.
  rng = np.random.default_rng(k)
  d = 100_000
  base = rng.normal(size=d)
  rows = np.stack([base + np.sqrt(residual) * rng.normal(size=d) for _ in range(k)])
  rows = rows.astype(np.float32).astype(np.float64)  # what the float32 transform sees
  want_u = reference.gram_schmidt(rows)
  assert np.count_nonzero(np.linalg.norm(want_u, axis=1)) == k  # all above eps: none dropped
  tx = aj.orthogonalize(granularity='global', algorithm=algorithm)
  got = np.asarray(tx.update({'w': jnp.asarray(rows, jnp.float32)}, tx.init(None))[0]['w'],
                   np.float64)
  want = want_u.sum(0)
  direction_error = np.linalg.norm(got - want) / np.linalg.norm(want)
  assert direction_error < BOUNDS[algorithm]['direction']
  # The kept vectors: implicit (u = C J) for the Gram path, so rebuild them in float64 from C.
  if algorithm == 'gram':
    coeffs = np.asarray(gram_schmidt_coefficients(jnp.asarray(
        np.asarray(rows, np.float32) @ np.asarray(rows, np.float32).T)), np.float64)
    u = coeffs @ rows
  else:
    u = np.asarray(gram_schmidt_vectors(jnp.asarray(rows, jnp.float32)), np.float64)
  unit = u / np.linalg.norm(u, axis=1, keepdims=True)
  cosine = np.abs(unit @ unit.T - np.eye(k)).max()
  print(f'{algorithm} K={k} residual={residual:g}: direction {direction_error:.1e}, '
        f'max |cos| {cosine:.1e}')  # pytest -s -k accuracy_against shows the measured values
  assert cosine < BOUNDS[algorithm]['cosine']


def test_single_exit_is_identity():
  rows = np.random.default_rng(0).normal(size=(1, 20))
  np.testing.assert_allclose(_flat(_apply(rows)), rows[0], rtol=1e-6)


def test_orthogonal_inputs_give_plain_sum():
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(20, 5)))
  rows = q.T * np.arange(1, 6)[:, None]
  got = _flat(_apply(rows, granularity='global'))
  np.testing.assert_allclose(got, rows.sum(0), atol=1e-5)


def test_first_exit_passes_unchanged_and_components_are_orthogonal():
  rng = np.random.default_rng(2)
  rows = rng.normal(size=(4, 20))
  # Each exit's Gram-Schmidt vector, read off by feeding exits 1..k.
  partial = [_flat(_apply(rows[:k], granularity='global')) for k in range(1, 5)]
  components = np.diff(np.stack([np.zeros(20)] + partial), axis=0)
  np.testing.assert_allclose(components[0], rows[0], rtol=1e-5)
  cos = components @ components.T / np.outer(*(2 * [np.linalg.norm(components, axis=1)]))
  np.testing.assert_allclose(cos, np.eye(4), atol=1e-4)


def test_priority_permutes_the_order():
  rows = np.random.default_rng(4).normal(size=(3, 20))
  priority = (2, 0, 1)
  got = _flat(_apply(rows, granularity='global', priority=priority))
  np.testing.assert_allclose(got, reference.osgd_direction(rows, priority=priority),
                             rtol=1e-4, atol=1e-5)
  # The exit listed first keeps its whole gradient: the result minus it is
  # orthogonal to it.
  rest = got - rows[2]
  assert abs(rest @ rows[2]) < 1e-3 * np.linalg.norm(rows[2]) ** 2


def test_partition_granularity_groups_leaves():
  rows = np.random.default_rng(5).normal(size=(3, 20))
  labels = {'w': 'dense', 'conv': {'kernel': 'dense'}, 'b': 'bias'}
  got = _flat(_apply(rows, granularity=labels))
  want = np.concatenate([reference.osgd_direction(rows[:, :12]),
                         reference.osgd_direction(rows[:, 12:])])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  by_callable = _flat(_apply(rows, granularity=lambda tree: labels))
  np.testing.assert_array_equal(got, by_callable)


def test_diagnostics_report_weights_norms_and_cosines():
  rows = np.random.default_rng(6).normal(size=(3, 20))
  rows[1] = -rows[0] + 0.1 * rows[1]
  tx = aj.orthogonalize(granularity='global', diagnostics=True, num_exits=3)
  _, state = tx.update(_tree(rows), tx.init(None))
  d = state.diagnostics
  np.testing.assert_allclose(d.grad_norms, np.linalg.norm(rows, axis=1), rtol=1e-5)
  # The weights w with sum_k u_k = w^T J, from a float64 Gram-Schmidt.
  w = np.linalg.lstsq(rows.T, reference.gram_schmidt(rows).sum(0), rcond=None)[0]
  np.testing.assert_allclose(d.weights[0], w, rtol=1e-3, atol=1e-4)
  assert d.weights[0, 0] > 1 and bool(d.negative_weight) == bool(np.any(w < 0))
  unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
  np.testing.assert_allclose(d.cosine, unit @ unit.T, atol=1e-5)
  assert d.cosine[0, 1] < -0.9  # the planted conflict shows


def _branched_tree(rows):
  """A branched network's per-exit gradients (K = 3): ``trunk1`` reached by every exit,
  ``trunk2`` by exits 1 and 2, ``head_k`` by exit k alone."""
  rows = np.asarray(rows, np.float64)
  tree = {'trunk1': rows[:, :6], 'trunk2': rows[:, 6:12] * [[0], [1], [1]]}
  for k in range(3):
    tree[f'head{k}'] = rows[:, 12 + 3 * k:15 + 3 * k] * (np.arange(3) == k)[:, None]
  return tree


def _exits_reference(tree, **options):
  """Per group of leaves reached by the same exits, a float64 Gram-Schmidt of the group."""
  groups = {}
  for name, part in tree.items():
    reached = tuple(np.flatnonzero(np.any(part != 0, axis=1)))
    groups.setdefault(reached, []).append(name)
  out = {}
  for names in groups.values():
    total = reference.osgd_direction(np.concatenate([tree[n] for n in names], 1), **options)
    for name, piece in zip(names, np.split(total, np.cumsum([tree[n].shape[1] for n in names]))):
      out[name] = piece
  return out


@pytest.mark.parametrize('rescale', [None, 'exit_norm', 'sum_norm'])
def test_exits_granularity_against_reference_on_a_branched_tree(rescale):
  rows = np.random.default_rng(8).normal(size=(3, 21))
  rows[2, :12] = 2.5 * rows[0, :12] + 0.3 * rows[2, :12]  # the last exit leans on the first
  tree = _branched_tree(rows)
  want = _exits_reference(tree, rescale=rescale)
  got, _ = jax.jit(aj.orthogonalize(rescale=rescale).update)(
      jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree), None)
  for name in tree:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)
  for k in range(3):  # each head moves along its own exit's gradient, whatever the rescaling
    head = rows[k, 12 + 3 * k:15 + 3 * k]
    np.testing.assert_allclose(got[f'head{k}'], head, rtol=1e-5)


# ----- one harness: every configuration through jit, dtypes and optax idioms -----

CONFIGS = [
    dict(),
    dict(granularity='global'),
    dict(granularity='leaf'),
    dict(rescale='exit_norm'),
    dict(rescale='sum_norm', granularity='global'),
    dict(priority=(3, 2, 1, 0)),
    dict(diagnostics=True, num_exits=4),
]


def _problem(dtype):
  rng = np.random.default_rng(7)
  params = {'dense': {'kernel': jnp.asarray(rng.normal(size=(5, 3)), dtype),
                      'bias': jnp.zeros((3,), dtype)}, 'scale': jnp.ones((), dtype)}
  jac = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=(4, *p.shape)), dtype), params)
  return params, jac


@pytest.mark.parametrize('config', CONFIGS, ids=str)
@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_jit_matches_eager_and_keeps_dtype(config, dtype):
  params, jac = _problem(dtype)
  tx = aj.orthogonalize(**config)
  state = tx.init(params)
  eager, _ = tx.update(jac, state, params)
  jitted, new_state = jax.jit(tx.update)(jac, state, params)
  for e, j, p in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), jax.tree.leaves(params)):
    assert j.dtype == dtype and j.shape == p.shape
    np.testing.assert_allclose(np.float32(e), np.float32(j), rtol=1e-2 if dtype == jnp.bfloat16 else 1e-5)
  assert jax.tree.structure(new_state) == jax.tree.structure(state)
  # Against the float64 reference on the same inputs. Every exit reaches every leaf here, so
  # 'exits' (the default) is one group, as 'global' is.
  parts = [np.asarray(leaf, np.float64).reshape(4, -1) for leaf in jax.tree.leaves(jac)]
  options = {key: config[key] for key in ('rescale', 'priority') if key in config}
  if config.get('granularity') == 'leaf':
    want = np.concatenate([reference.osgd_direction(part, **options) for part in parts])
  else:
    want = reference.osgd_direction(np.concatenate(parts, 1), **options)
  got = np.concatenate([np.ravel(np.float32(j)) for j in jax.tree.leaves(jitted)])
  tolerance = 5e-2 if dtype == jnp.bfloat16 else 1e-4
  np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance * np.abs(want).max())


@pytest.mark.parametrize('config', CONFIGS, ids=str)
def test_bfloat16_close_to_float32(config):
  params, jac = _problem(jnp.float32)
  tx = aj.orthogonalize(**config)
  full, _ = tx.update(jac, tx.init(params), params)
  half, _ = tx.update(jax.tree.map(lambda x: x.astype(jnp.bfloat16), jac), tx.init(params), params)
  for f, h in zip(jax.tree.leaves(full), jax.tree.leaves(half)):
    np.testing.assert_allclose(np.float32(h), f, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize('config', CONFIGS, ids=str)
@pytest.mark.parametrize('inner', ['sgd', 'adam', 'schedule'])
def test_chains_with_optax(config, inner):
  params, jac = _problem(jnp.float32)
  rest = {'sgd': optax.sgd(0.1, momentum=0.9), 'adam': optax.adam(1e-3),
          'schedule': optax.sgd(optax.cosine_decay_schedule(0.1, 10))}[inner]
  tx = optax.chain(aj.orthogonalize(**config), rest)
  state = tx.init(params)
  step = jax.jit(tx.update)
  got, state = step(jac, state, params)
  # The chained step equals the inner optimizer fed the orthogonalized sum.
  orthogonalize = aj.orthogonalize(**config)
  direction, _ = jax.jit(orthogonalize.update)(jac, orthogonalize.init(params), params)
  want, _ = rest.update(direction, rest.init(params), params)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7)
  for _ in range(2):
    params = optax.apply_updates(params, got)
    got, state = step(jac, state, params)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(optax.apply_updates(params, got)))


def test_inject_hyperparams():
  params, jac = _problem(jnp.float32)
  tx = optax.inject_hyperparams(aj.osgd, static_args=('num_exits', 'diagnostics'))(
      learning_rate=0.1, weight_decay=1e-3, eps=1e-5, num_exits=4, diagnostics=True)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(jac, state, params)
  plain = aj.osgd(0.1, weight_decay=1e-3)
  want, _ = plain.update(jac, plain.init(params), params)
  for u, w in zip(jax.tree.leaves(updates), jax.tree.leaves(want)):
    np.testing.assert_allclose(u, w, rtol=1e-5, atol=1e-7)
  # The injected rate is the one used: halve it in a fresh state and the step halves.
  fresh = tx.init(params)
  fresh.hyperparams['learning_rate'] = jnp.asarray(0.05)
  halved, _ = jax.jit(tx.update)(jac, fresh, params)
  for h, w in zip(jax.tree.leaves(halved), jax.tree.leaves(want)):
    np.testing.assert_allclose(h, 0.5 * w, rtol=1e-5, atol=1e-8)


def test_osgd_weight_decay_is_decoupled_and_not_projected():
  params, jac = _problem(jnp.float32)
  lr, momentum, decay = 0.1, 0.9, 0.01
  tx = aj.osgd(lr, momentum=momentum, weight_decay=decay)
  direction, _ = aj.orthogonalize().update(jac, optax.EmptyState(), params)
  first, state = tx.update(jac, tx.init(params), params)
  zero_jac = jax.tree.map(jnp.zeros_like, jac)
  second, _ = tx.update(zero_jac, state, params)
  # Decoupled: the decay joins after momentum, so the second step's momentum carries only
  # the first direction; decay inside momentum would add momentum * decay * p to it.
  for u1, u2, d, p in zip(jax.tree.leaves(first), jax.tree.leaves(second),
                          jax.tree.leaves(direction), jax.tree.leaves(params)):
    np.testing.assert_allclose(u1, -lr * (d + decay * p), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(u2, -lr * (momentum * d + decay * p), rtol=1e-5, atol=1e-8)


def test_osgd_equals_manual_chain_with_nesterov_and_schedule():
  params, jac = _problem(jnp.float32)
  schedule = optax.linear_schedule(0.1, 0.0, 10)
  tx = aj.osgd(schedule, momentum=0.5, nesterov=True, granularity='global')
  manual = optax.chain(aj.orthogonalize(granularity='global'),
                       optax.sgd(schedule, momentum=0.5, nesterov=True))
  s1, s2 = tx.init(params), manual.init(params)
  for _ in range(3):
    u1, s1 = tx.update(jac, s1, params)
    u2, s2 = manual.update(jac, s2, params)
    for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)


# ----- bad input -----

def test_rejects_leaf_without_exit_axis():
  tx = aj.orthogonalize()
  with pytest.raises(ValueError, match='scalar.*exit_jacobian'):
    tx.update({'a': jnp.ones((4, 3)), 'b': jnp.ones(())}, tx.init(None))


def test_rejects_disagreeing_k():
  tx = aj.orthogonalize()
  with pytest.raises(ValueError, match='disagree on the number of exits'):
    jax.jit(tx.update)({'a': jnp.ones((4, 3)), 'b': jnp.ones((3, 3))}, tx.init(None))


def test_rejects_summed_gradients_against_params():
  tx = aj.orthogonalize()
  params = {'a': jnp.ones((4, 3))}
  with pytest.raises(ValueError, match=r'no exit axis.*exit_jacobian'):
    tx.update({'a': jnp.ones((4, 3))}, tx.init(params), params)
  with pytest.raises(ValueError, match=r'expected \[K, \*param.shape\]'):
    tx.update({'a': jnp.ones((2, 3, 4))}, tx.init(params), params)


def test_rejects_bad_options():
  with pytest.raises(ValueError, match='Unknown rescale'):
    aj.orthogonalize(rescale='unit')
  with pytest.raises(ValueError, match='num_exits'):
    aj.orthogonalize(diagnostics=True)
  with pytest.raises(ValueError, match='not a permutation'):
    aj.orthogonalize(priority=(0, 0, 1), num_exits=3)
  with pytest.raises(ValueError, match="Unknown granularity 'layer'"):
    aj.orthogonalize(granularity='layer')
  tx = aj.orthogonalize(priority=(1, 0))
  with pytest.raises(ValueError, match='not a permutation of the 3 exits'):
    tx.update({'a': jnp.ones((3, 3))}, tx.init(None))
  tx = aj.orthogonalize(num_exits=4)
  with pytest.raises(ValueError, match='K=3'):
    tx.update({'a': jnp.ones((3, 3))}, tx.init(None))
  with pytest.raises(ValueError, match="algorithm='vectors' needs a static grouping"):
    aj.orthogonalize(algorithm='vectors')
  with pytest.raises(TypeError, match='positional'):
    aj.osgd(0.1, 0.9)
