"""Per-exit gradients averaged over a named data axis before the Gram matrix (shard_map)."""

import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent('''
    import functools, os
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh, PartitionSpec as P
    import anytime_jax as aj

    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(64, 5)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 64))
    params = {'w1': jnp.asarray(rng.normal(size=(5, 8)), jnp.float32),
              'h1': jnp.asarray(rng.normal(size=(8, 3)), jnp.float32),
              'w2': jnp.asarray(rng.normal(size=(8, 8)), jnp.float32),
              'h2': jnp.asarray(rng.normal(size=(8, 3)), jnp.float32)}

    def losses(p, x, y):  # two exits, mean over the (local) batch
      a = jnp.tanh(x @ p['w1']); b = jnp.tanh(a @ p['w2'])
      return aj.exit_cross_entropy(jnp.stack([a @ p['h1'], b @ p['h2']]), y)

    mesh = Mesh(np.array(jax.devices()), ('data',))
    for make in (lambda **kw: aj.orthogonalize(**kw), lambda **kw: aj.upgrad(**kw),
                 lambda **kw: aj.pcgrad(**kw), lambda **kw: aj.adaloss(num_exits=2, **kw)):
      whole = make()
      whole_state = whole.init(params)
      jac, exit_losses, _ = aj.exit_jacobian(losses, params, x, y)
      for _ in range(2):  # AdaLoss weights the second step by the first step's losses
        want, whole_state = whole.update(jac, whole_state, params, losses=exit_losses)
      sharded = make(axis_name='data')

      # check_vma=False, as with pmap: each device differentiates its own shard's losses
      # (with the default check_vma=True, JAX itself sums the gradients of replicated params).
      # Jitted: an eager shard_map dispatches every operation on every device.
      @jax.jit
      @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P('data'), P('data')),
                         out_specs=(P(), P('data')), check_vma=False)
      def step(params, x, y):
        jac, exit_losses, _ = aj.exit_jacobian(losses, params, x, y)  # this shard only
        state = sharded.init(params)
        for _ in range(2):
          out, state = sharded.update(jac, state, params, losses=exit_losses)
        # Each replica's running losses (AdaLoss), stacked: they must agree with the whole batch's.
        return out, jnp.asarray(getattr(state, 'average', jnp.zeros(2)))[None]

      got, averages = step(params, x, y)
      for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-5, atol=1e-6)
      if isinstance(whole_state, aj.AdaLossState):
        np.testing.assert_allclose(averages, np.tile(whole_state.average, (8, 1)), rtol=2e-5)
      # Without the axis, each device combines its own gradients: a different direction.
      unsynced = make()
      @jax.jit
      @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P('data'), P('data')),
                         out_specs=P(), check_vma=False)
      def naive(params, x, y):
        jac, exit_losses, _ = aj.exit_jacobian(losses, params, x, y)
        state = unsynced.init(params)
        for _ in range(2):
          out, state = unsynced.update(jac, state, params, losses=exit_losses)
        return jax.tree.map(lambda u: jax.lax.pmean(u, 'data'), out)
      wrong = naive(params, x, y)
      assert any(not np.allclose(wrong[k], want[k], rtol=1e-3) for k in want)
    print('ok')
''')


@pytest.mark.slow
def test_axis_name_averages_before_the_gram_matrix_under_shard_map(tmp_path):
  script = tmp_path / 'sharded.py'
  script.write_text(SCRIPT)
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8', 'JAX_PLATFORMS': 'cpu',
         'PATH': '/usr/bin:/bin'}
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=ROOT,
                       env={**env, 'PYTHONPATH': str(ROOT)}, timeout=300)
  assert out.returncode == 0 and 'ok' in out.stdout, out.stderr[-3000:]
