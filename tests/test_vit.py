"""The early-exit ViT: nesting invariants, block lower-triangular streams, dropout, tied head."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import anytime_jax as aj
from anytime_jax import models

X = np.random.default_rng(1).standard_normal((4, 8, 8, 1)).astype(np.float32)  # 4 patches of 4x4
Y = jnp.arange(4) % 5
VARIANTS = {
    'branched': dict(blocks_per_stage=(1, 2, 1)),
    'width': dict(growth='width', depth=2),
    'branched_tied': dict(head='tied', blocks_per_stage=1),
    'width_tied': dict(growth='width', depth=2, head='tied'),
}


# The quick suite runs two variants (together: branched, width-nested, tied); CI runs all four.
QUICK_VARIANTS = [v if v in ('branched', 'width_tied') else pytest.param(v, marks=pytest.mark.slow)
                  for v in VARIANTS]


def _create(variant, **options):
  return models.create('vit', num_classes=5, num_exits=3, width=4, num_heads=2,
                       **{**VARIANTS[variant], **options})


@functools.lru_cache(maxsize=None)
def _setup(variant, dropout=0.0):
  """A tiny ViT with random parameters drawn on the host (no compile per parameter shape)."""
  network = _create(variant, dropout=dropout)
  shapes = jax.eval_shape(functools.partial(models.init_variables, network), jax.random.key(0), X)
  rng = np.random.default_rng(2)
  variables = jax.tree.map(lambda s: (0.5 * rng.standard_normal(s.shape)).astype(np.float32),
                           shapes)
  return network, variables


def _perturb_stage(variables, j):
  params = dict(variables['params'])
  params[f'stages_{j}'] = jax.tree.map(lambda v: v + 1.0, params[f'stages_{j}'])
  return {'params': params}


@pytest.mark.parametrize('variant', QUICK_VARIANTS)
@pytest.mark.parametrize('train', [False, True])
def test_exit_is_identical_whether_or_not_later_stages_run(variant, train):
  # Train mode with dropout: the masks follow each module's path, the same in the cut network.
  network, variables = _setup(variant, dropout=0.25 if train else 0.0)
  rngs = {'dropout': jax.random.key(3)} if train else None
  full = network.apply(variables, X, train=train, rngs=rngs)
  for k in range(network.num_exits):
    head = models.AnytimeNetwork(stages=network.stages[:k + 1])
    names = {f'stages_{j}' for j in range(k + 1)}
    part = head.apply({'params': {n: t for n, t in variables['params'].items() if n in names}},
                      X, train=train, rngs=rngs)
    np.testing.assert_array_equal(part, full[:k + 1])


@pytest.mark.parametrize('variant', QUICK_VARIANTS)
def test_exit_depends_exactly_on_stages_up_to_it(variant):
  network, variables = _setup(variant)
  base = network.apply(variables, X)
  for j in range(network.num_exits):
    moved = network.apply(_perturb_stage(variables, j), X)
    changed = [not np.array_equal(moved[k], base[k]) for k in range(network.num_exits)]
    assert changed == [j <= k for k in range(network.num_exits)], j


def test_width_nesting_is_block_lower_triangular():
  _, variables = _setup('width')
  params = variables['params']
  # Streams of 4, 4 and 8 channels: stream k's matrices read streams <= k (4, 8, 16 channels)
  # and write its own; the MLP (ratio 4) reads the hidden layers of streams <= k.
  for k, (own, seen) in enumerate([(4, 4), (4, 8), (8, 16)]):
    block = params[f'stages_{k}']['block1']
    assert block['qkv']['kernel'].shape == (seen, 3 * own)
    assert block['proj']['kernel'].shape == (seen, own)
    assert block['fc1']['kernel'].shape == (seen, 4 * own)
    assert block['fc2']['kernel'].shape == (4 * seen, own)
    # One LayerNorm per stream and block position, over the stream's own channels only.
    assert block['LayerNorm_0']['scale'].shape == (own,)
    assert params[f'stages_{k}']['exit_norm']['scale'].shape == (seen,)
    assert params[f'stages_{k}']['head']['kernel'].shape == (seen, 5)


def test_dropout_follows_the_key_in_train_mode_only():
  network, variables = _setup('width_tied', dropout=0.25)
  apply = jax.jit(lambda key: network.apply(variables, X, train=True, rngs={'dropout': key}))
  a, b, again = apply(jax.random.key(0)), apply(jax.random.key(1)), apply(jax.random.key(0))
  np.testing.assert_array_equal(a, again)
  assert not np.allclose(a, b)
  # Eval mode needs no key and is deterministic; train mode without one fails clearly.
  np.testing.assert_array_equal(network.apply(variables, X), network.apply(variables, X))
  with pytest.raises(Exception, match='dropout'):
    network.apply(variables, X, train=True)
  # The staged engine hands each stage its own key: same key, same gradients.
  staged = jax.jit(lambda key: aj.staged_exit_jacobian(network, variables, X, Y, rng=key))
  g0, g1, g0_again = staged(jax.random.key(0)), staged(jax.random.key(1)), staged(jax.random.key(0))
  np.testing.assert_array_equal(g0.losses, g0_again.losses)
  assert not np.allclose(g0.losses, g1.losses)


@pytest.mark.slow  # CI; the quick suite checks the staged engine's key in the dropout test
@pytest.mark.parametrize('engine', ['staged', pytest.param('vmap', marks=pytest.mark.slow),
                                    pytest.param('summed', marks=pytest.mark.slow)])
def test_the_training_step_draws_dropout_from_its_key_and_step(engine):
  network, variables = _setup('branched', dropout=0.25)
  tx = optax.sgd(0.1) if engine == 'summed' else aj.osgd(0.1)
  state = aj.TrainState(jnp.zeros((), jnp.int32), variables['params'], {}, tx.init(
      variables['params']))
  gradients = {'staged': aj.staged_gradients, 'vmap': aj.vmapped_gradients,
               'summed': aj.summed_gradients}[engine]()
  step = {seed: jax.jit(aj.make_train_step(network, tx, dropout_key=jax.random.key(seed),
                                           gradients=gradients)) for seed in (0, 1)}
  losses = [step[seed](state, X, Y)[1]['exit_losses'] for seed in (0, 0, 1)]
  np.testing.assert_array_equal(losses[0], losses[1])
  assert not np.allclose(losses[0], losses[2])
  later = step[0](state._replace(step=jnp.ones((), jnp.int32)), X, Y)[1]['exit_losses']
  assert not np.allclose(losses[0], later)  # each step its own masks


def test_a_missing_dropout_key_names_the_argument():
  network, variables = _setup('branched', dropout=0.25)
  with pytest.raises(ValueError, match='got no key: pass rng=key'):
    aj.staged_exit_jacobian(network, variables, X, Y)
  state = aj.TrainState(jnp.zeros((), jnp.int32), variables['params'], {}, optax.sgd(0.1).init(
      variables['params']))
  step = aj.make_train_step(network, optax.sgd(0.1), gradients=aj.summed_gradients())
  with pytest.raises(ValueError, match=r'dropout_key=key'):
    step(state, X, Y)


def test_our_nnx_vit_trains_with_dropout():
  from flax import nnx
  model = aj.create_nnx('vit', num_classes=5, num_exits=3, width=4, num_heads=2, dropout=0.25,
                        **VARIANTS['branched'], example=X, rngs=nnx.Rngs(0))
  twin = nnx.clone(model)
  step = nnx.jit(lambda m: aj.nnx_staged_exit_jacobian(m, X, Y).losses)
  first = step(model)
  np.testing.assert_array_equal(first, step(twin))  # the same Rngs state, the same masks
  assert not np.allclose(first, step(model))  # the model's RNG counts moved on
  np.testing.assert_array_equal(model(X), model(X))  # eval: no dropout


@pytest.mark.parametrize('variant', ['branched_tied', 'width_tied'])
def test_tied_head_gets_every_exits_gradient(variant):
  network, variables = _setup(variant)
  jac, losses, _ = jax.jit(lambda v: aj.staged_exit_jacobian(network, v, X, Y, train=False))(
      variables)

  def all_losses(params):
    return aj.exit_cross_entropy(network.apply({'params': params}, X), Y)

  want, want_losses, _ = jax.jit(lambda p: aj.exit_jacobian(all_losses, p))(variables['params'])
  np.testing.assert_allclose(losses, want_losses, rtol=1e-5)
  assert jax.tree.structure(jac) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(jac), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  # Stage 0 owns the head's bias and first rows; every exit's gradient reaches them.
  for name in ('tied_bias', 'tied_kernel'):
    rows = jac['stages_0'][name]
    assert all(np.any(rows[k]) for k in range(network.num_exits)), name


def test_tied_head_is_one_classifier():
  _, variables = _setup('branched_tied')
  params = variables['params']
  assert set(params['stages_0']) >= {'tied_kernel', 'tied_bias'}
  assert not any('tied' in n or n == 'head' for k in (1, 2) for n in params[f'stages_{k}'])


def test_flops_grow_with_width_nesting():
  x = jnp.zeros((1, 28, 28, 1))
  flops = {}
  for growth in (None, 'width'):
    network = models.create('vit', num_classes=10, growth=growth)
    variables = jax.eval_shape(lambda n=network: n.init(jax.random.key(0), x))
    flops[growth] = np.array(aj.exit_flops(network, variables, x))
  # Branched: two blocks more per exit, so about linear growth.
  np.testing.assert_allclose(flops[None] / flops[None][0], [1, 2, 3, 4], rtol=0.1)
  # Width nesting doubles the width: matrices (the bulk at 49 tokens) cost about 4x.
  ratios = flops['width'][1:] / flops['width'][:-1]
  assert np.all((ratios > 2.5) & (ratios < 4.5)), ratios


@pytest.mark.slow  # CI; the quick suite keeps the invariants (training: tests/test_models.py too)
def test_trains_with_osgd():
  network = _create('width_tied', dropout=0.1)
  rng = np.random.default_rng(0)
  # Class c: a bright patch at position c of the four.
  y = rng.integers(0, 4, 32)
  x = rng.normal(0, 0.3, (32, 8, 8, 1)).astype(np.float32)
  for i, c in enumerate(y):
    x[i, 4 * (c // 2):4 * (c // 2) + 4, 4 * (c % 2):4 * (c % 2) + 4] += 2.0
  tx = aj.osgd(0.05, momentum=0.9)
  state = aj.create_train_state(network, tx, jax.random.key(0), jnp.asarray(x))

  @jax.jit
  def step(state, key):
    jac, losses, _ = aj.staged_exit_jacobian(network, {'params': state.params}, x, y, rng=key)
    updates, opt_state = tx.update(jac, state.opt_state, state.params)
    return state._replace(params=optax.apply_updates(state.params, updates),
                          opt_state=opt_state), losses

  first = None
  for i in range(20):
    state, losses = step(state, jax.random.key(i))
    first = losses if first is None else first
  assert np.all(np.asarray(losses) < 0.7 * np.asarray(first)), (first, losses)


@pytest.mark.parametrize('options,match', [
    (dict(patch_size=3), 'not divisible by patch_size 3'),
    (dict(num_heads=3), 'width 4 is not divisible by num_heads 3'),
    (dict(growth='depth'), 'growth must be one of'),
    (dict(head='shared'), 'head must be one of'),
    (dict(depth=2), "depth is for growth='width'"),
    (dict(growth='width', blocks_per_stage=2), 'blocks_per_stage is for branched'),
    (dict(blocks_per_stage=(1, 2)), 'blocks_per_stage needs 3 entries'),
    (dict(blocks_per_stage=0), 'blocks_per_stage must be a positive integer'),
    (dict(dropout=1.0), r'dropout must be in \[0, 1\)'),
    (dict(num_levels=2), 'Bad option'),
])
def test_bad_options_say_what_is_wrong(options, match):
  with pytest.raises(ValueError, match=match):
    network = models.create('vit', num_classes=5, num_exits=3, width=4, **options)
    jax.eval_shape(lambda: network.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))
