"""The staged engine equals the plain per-exit Jacobian for every model, also on a mesh."""

import functools
import os
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import anytime_jax as aj
from anytime_jax import models

from tests.networks import small

ROOT = pathlib.Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def _setup(name):
  # Two resolution levels and, for nested_both (8x per stage), two stages keep compiles short.
  network = models.create(name, num_classes=5, num_exits=2 if name == 'nested_both' else 3,
                          width=4, **small(name, num_levels=2))
  x = jax.random.normal(jax.random.key(1), (6, 8, 8, 1))
  y = jnp.arange(6) % 5
  return network, models.init_variables(network, jax.random.key(0), x), x, y


def _reference(network, variables, x, y, train):
  stats = variables.get('batch_stats', {})  # the ViT has none

  def losses(params):
    v = {'params': params, 'batch_stats': stats}
    if train:
      logits, new = network.apply(v, x, train=True, mutable=['batch_stats'])
      return aj.exit_cross_entropy(logits, y), new.get('batch_stats', {})
    return aj.exit_cross_entropy(network.apply(v, x), y), stats
  return losses


def _assert_trees_close(a, b, **tol):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert u.shape == v.shape
    np.testing.assert_allclose(u, v, **tol)


# Every architecture runs under CI; the README's quick suite keeps the cheapest (and
# test_any_stages_give_the_plain_per_exit_jacobian).
CASES = ([(name, True, False) if name == 'branched'
          else pytest.param(name, True, False, marks=pytest.mark.slow)
          for name in models.ARCHITECTURES]
         + [pytest.param('nested_width', False, False, marks=pytest.mark.slow),
            ('branched', True, True),
            pytest.param('nested_depth', False, True, marks=pytest.mark.slow)])


@pytest.mark.parametrize('name,train,vectorize', CASES)
def test_staged_equals_exit_jacobian(name, train, vectorize):
  network, variables, x, y = _setup(name)
  staged = jax.jit(lambda v: aj.staged_exit_jacobian(network, v, x, y, train=train,
                                                     vectorize=vectorize))
  jac, losses, rest = staged(variables)
  ref_fn = _reference(network, variables, x, y, train)
  want, want_losses, want_stats = jax.jit(
      lambda p: aj.exit_jacobian(ref_fn, p, has_aux=True))(variables['params'])
  _assert_trees_close(jac, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  assert set(rest) == set(variables) - {'params'}
  _assert_trees_close(rest.get('batch_stats', {}), want_stats, rtol=1e-5, atol=1e-6)
  if name == 'nested_depth':
    by_jacrev = jax.jit(jax.jacrev(lambda p: ref_fn(p)[0]))(variables['params'])
    _assert_trees_close(jac, by_jacrev, rtol=1e-4, atol=1e-5)
  # Rows of later exits only: exit k's gradient is exactly zero on stages after k.
  for k in range(network.num_exits):
    for j in range(k + 1, network.num_exits):
      assert not any(np.any(leaf[k]) for leaf in jax.tree.leaves(jac[f'stages_{j}']))


def test_custom_loss_fn():
  network, variables, x, y = _setup('branched')
  targets = jax.nn.one_hot(y, 5)
  loss_fn = lambda logits, t: jnp.mean((jax.nn.softmax(logits) - t) ** 2)
  jac, losses, _ = jax.jit(lambda v: aj.staged_exit_jacobian(network, v, x, targets,
                                                             loss_fn=loss_fn))(variables)

  def ref(params):
    logits, new = network.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                                train=True, mutable=['batch_stats'])
    return jax.vmap(lambda l: loss_fn(l, targets))(logits)
  want, want_losses, _ = jax.jit(lambda p: aj.exit_jacobian(ref, p))(variables['params'])
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  _assert_trees_close(jac, want, rtol=1e-4, atol=1e-6)


def test_staged_rejects_variables_without_params():
  network, variables, x, y = _setup('branched')
  with pytest.raises(ValueError, match="variables lack 'params'"):
    aj.staged_exit_jacobian(network, {'batch_stats': variables['batch_stats']}, x, y)


def test_train_step_engines_agree():
  network, _, x, y = _setup('branched')
  tx = aj.osgd(0.1)
  state = aj.create_train_state(network, tx, jax.random.key(0), x)
  got, metrics = jax.jit(aj.make_train_step(network, tx, gradients=aj.vmapped_gradients()))(
      state, x, y)
  want, _ = jax.jit(aj.make_train_step(network, tx, gradients=aj.staged_gradients()))(
      state, x, y)
  _assert_trees_close(got.params, want.params, rtol=1e-4, atol=1e-6)
  assert metrics['exit_losses'].shape == (3,) and int(got.step) == 1


def test_summed_train_step_is_sgd_on_summed_loss():
  network, variables, x, y = _setup('branched')
  tx = optax.sgd(0.1)
  state = aj.create_train_state(network, tx, jax.random.key(0), x)
  new, metrics = jax.jit(aj.make_train_step(network, tx, gradients=aj.summed_gradients()))(
      state, x, y)
  jac, _, _ = jax.jit(lambda v: aj.staged_exit_jacobian(network, v, x, y))(
      {'params': state.params, 'batch_stats': state.batch_stats})
  want = jax.tree.map(lambda p, g: p - 0.1 * g.sum(0), state.params, jac)
  _assert_trees_close(new.params, want, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match='reduction must be one of'):
    aj.summed_gradients(reduction='max')


@pytest.mark.parametrize('flags, source', [
    (dict(per_exit=False), 'summed_gradients(reduction=\'sum\')'),
    (dict(per_exit=False, reduction='mean'), 'summed_gradients(reduction=\'mean\')'),
    (dict(engine='vmap'), 'vmapped_gradients()'),
    (dict(engine='staged'), 'staged_gradients()'),
    (dict(distillation=aj.Distillation(0.5, 4.0)),
     'staged_gradients(distillation=Distillation(weight=0.5, temperature=4.0))'),
])
def test_the_old_step_flags_still_work_for_one_release_and_name_the_source(flags, source):
  network = models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  with pytest.warns(DeprecationWarning, match=re.escape(f'gradients=aj.{source}')):
    aj.make_train_step(network, optax.sgd(0.1), **flags)


def test_an_old_flag_step_is_the_new_step_and_bad_flags_are_refused():
  network, _, x, y = _setup('branched')
  tx = optax.sgd(0.1)
  state = aj.create_train_state(network, tx, jax.random.key(0), x)
  with pytest.warns(DeprecationWarning):
    old = jax.jit(aj.make_train_step(network, tx, per_exit=False))
  new = jax.jit(aj.make_train_step(network, tx, gradients=aj.summed_gradients()))
  _assert_trees_close(old(state, x, y)[0].params, new(state, x, y)[0].params, rtol=0, atol=0)
  with pytest.raises(ValueError, match='engine must be one of'):
    aj.make_train_step(network, tx, engine='fast')
  with pytest.raises(ValueError, match='pass gradients= alone'):
    aj.make_train_step(network, tx, gradients=aj.staged_gradients(), engine='vmap')
  with pytest.raises(TypeError, match="unexpected keyword arguments \\['per_exits'\\]"):
    aj.make_train_step(network, tx, per_exits=False)


MESH_SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import anytime_jax as aj
    from anytime_jax import models
    assert jax.device_count() == 8, jax.devices()
    network = models.create(NAME, num_classes=5, num_exits=2, width=4)
    x = jax.random.normal(jax.random.key(1), (16, 8, 8, 1)); y = jnp.arange(16) % 5
    variables = models.init_variables(network, jax.random.key(0), x)
    fn = jax.jit(lambda v, x, y: aj.staged_exit_jacobian(network, v, x, y))
    single = fn(variables, x, y)
    mesh = Mesh(np.array(jax.devices()), ('data',))
    xs = jax.device_put(x, NamedSharding(mesh, P('data')))
    ys = jax.device_put(y, NamedSharding(mesh, P('data')))
    vs = jax.device_put(variables, NamedSharding(mesh, P()))
    sharded = fn(vs, xs, ys)
    assert len(xs.sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    print('ok')
''')


@pytest.mark.slow
@pytest.mark.parametrize('name', ['branched', 'nested_both'])
def test_staged_on_a_mesh_of_8_cpu_devices(name):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', MESH_SCRIPT.replace('NAME', repr(name))],
                       capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
  assert out.returncode == 0 and 'ok' in out.stdout, out.stderr[-3000:]


@pytest.mark.slow
def test_bench_quick_runs(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'experiments.bench', '--quick', '--json',
                        str(tmp_path / 'bench.json')], capture_output=True, text=True,
                       timeout=600, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-3000:]
  import json
  rows = json.loads((tmp_path / 'bench.json').read_text())['rows']
  assert [r['model'] for r in rows] == ['branched']
  for r in rows:
    assert all(v > 0 for v in r['seconds'].values())
    assert 1.0 < r['ratio']['floor'] < 4.0
  assert '| branched |' in out.stdout


def test_a_plain_optimizer_on_per_exit_gradients_fails_at_trace_time():
  network = models.create('branched', num_classes=3, num_exits=2, width=4)
  x, y = jnp.zeros((4, 8, 8, 1)), jnp.zeros(4, jnp.int32)
  tx = optax.sgd(0.1)
  state = aj.create_train_state(network, tx, jax.random.key(0), x)
  with pytest.raises(ValueError, match=r'orthogonalize.*gradients=aj.summed_gradients\(\)'):
    jax.jit(aj.make_train_step(network, tx)).lower(state, x, y)
  fixed = aj.make_train_step(network, tx, gradients=aj.summed_gradients())
  jax.jit(fixed).lower(state, x, y)  # the fix works


def _user_stages():
  """A user's own network, no Flax: three dense stages, each with an exit head."""
  def stage(p, state, carry):
    h = jnp.tanh(carry @ p['w'])
    return h, h @ p['head'], state
  rng = np.random.default_rng(0)
  params = [{'w': jnp.asarray(rng.normal(size=(n, 8)), jnp.float32),
             'head': jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)} for n in (5, 8, 8)]
  return [stage] * 3, params


@pytest.mark.parametrize('vectorize', [False, True])
def test_any_stages_give_the_plain_per_exit_jacobian(vectorize):
  stages, params = _user_stages()
  x = jax.random.normal(jax.random.key(0), (16, 5))
  y = jnp.arange(16) % 3
  exit_loss = lambda k, logits: aj.exit_cross_entropy(logits[None], y)[0]
  jac, losses, states = jax.jit(lambda p: aj.staged_jacobian(
      stages, p, x, exit_loss, vectorize=vectorize))(params)

  def all_losses(p):
    carry, out = x, []
    for stage, stage_params in zip(stages, p):
      carry, logits, _ = stage(stage_params, None, carry)
      out.append(logits)
    return aj.exit_cross_entropy(jnp.stack(out), y)

  want, want_losses, _ = aj.exit_jacobian(all_losses, params)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
  _assert_trees_close(jac, want, rtol=1e-5, atol=1e-6)
  assert states == [None] * 3
  with pytest.raises(ValueError, match='one per stage'):
    aj.staged_jacobian(stages, params[:2], x, exit_loss)


def test_stages_draw_randomness_from_their_own_folded_key():
  _, params = _user_stages()

  def stage(p, state, carry, rng):  # dropout on the hidden units
    h = jnp.tanh(carry @ p['w']) * jax.random.bernoulli(rng, 0.5, (carry.shape[0], 8)) * 2.0
    return h, h @ p['head'], state

  x = jax.random.normal(jax.random.key(0), (16, 5))
  y = jnp.arange(16) % 3
  exit_loss = lambda k, logits: aj.exit_cross_entropy(logits[None], y)[0]
  key = jax.random.key(42)
  jac, losses, _ = jax.jit(lambda p: aj.staged_jacobian([stage] * 3, p, x, exit_loss,
                                                       rng=key))(params)

  def all_losses(p):
    carry, out = x, []
    for k, stage_params in enumerate(p):
      carry, logits, _ = stage(stage_params, None, carry, jax.random.fold_in(key, k))
      out.append(logits)
    return aj.exit_cross_entropy(jnp.stack(out), y)

  want, want_losses, _ = aj.exit_jacobian(all_losses, params)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
  _assert_trees_close(jac, want, rtol=1e-5, atol=1e-6)
  other, _, _ = aj.staged_jacobian([stage] * 3, params, x, exit_loss, rng=jax.random.key(7))
  assert not np.allclose(other[0]['w'], jac[0]['w'])  # the key matters


def test_linen_stages_keep_every_collection():
  network, variables, x, y = _setup('branched')
  extra = {'stages_0': {'note': jnp.ones(3)}}
  _, _, rest = jax.jit(lambda v: aj.staged_exit_jacobian(network, v, x, y))(
      {**variables, 'extra': extra})
  assert set(rest) == {'batch_stats', 'extra'}
  np.testing.assert_array_equal(rest['extra']['stages_0']['note'], jnp.ones(3))
