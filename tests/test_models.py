"""Anytime networks: the nesting invariants, anytime inference, FLOPs, and training with OSGD."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import anytime_jax as aj
from anytime_jax import models

from tests.networks import small

ANYTIME = ('branched', 'nested_width', 'nested_depth', 'nested_both', 'msdnet', 'vit')
SHAPE = (8, 8, 1)  # small images keep the suite fast; 28x28x1 and 32x32x3 are checked below


def _normal(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _setup(name, num_exits=3):
  """A small network with random variables, non-trivial BatchNorm statistics and scales included.

  The invariants hold for any variables, so NumPy draws them on the host: initializing
  through jax.random would compile a program for every parameter shape, most of the
  test's time.
  """
  network = models.create(name, num_classes=5, num_exits=num_exits, width=4, **small(name))
  x = _normal((6, *SHAPE), 1)
  shapes = jax.eval_shape(functools.partial(models.init_variables, network), jax.random.key(0), x)
  variables = jax.tree.map(lambda s: 0.3 * _normal(s.shape, 2), shapes)
  if 'batch_stats' in variables:  # the ViT has none
    variables['batch_stats'] = jax.tree.map(lambda v: 1.0 + np.abs(v), variables['batch_stats'])
  return network, variables, x


def _truncated(network, variables, k):
  """The network cut after stage k, with only its variables."""
  head = models.AnytimeNetwork(stages=network.stages[:k + 1])
  names = {f'stages_{j}' for j in range(k + 1)}
  return head, {c: {n: t for n, t in tree.items() if n in names} for c, tree in variables.items()}


def _perturb_stage(variables, j, seed=3):
  name = f'stages_{j}'
  out = {c: dict(tree) for c, tree in variables.items()}
  out['params'][name] = jax.tree.map(
      lambda v: v + _normal(v.shape, seed), variables['params'][name])
  return out


@pytest.mark.parametrize('name', [pytest.param(n, marks=pytest.mark.slow) if n == 'nested_both'
                                  else n for n in ANYTIME + ('independent',)])
@pytest.mark.parametrize('train', [False, True])
def test_exit_is_identical_whether_or_not_later_stages_run(name, train):
  network, variables, x = _setup(name)
  full = network.apply(variables, x, train=train, mutable=['batch_stats'] if train else False)
  full = full[0] if train else full
  for k in range(network.num_exits):
    head, head_vars = _truncated(network, variables, k)
    part = head.apply(head_vars, x, train=train, mutable=['batch_stats'] if train else False)
    part = part[0] if train else part
    np.testing.assert_array_equal(part, full[:k + 1])


@pytest.mark.parametrize('name', ANYTIME)
def test_exit_depends_exactly_on_stages_up_to_it(name):
  network, variables, x = _setup(name)
  base = network.apply(variables, x)
  for j in range(network.num_exits):
    moved = network.apply(_perturb_stage(variables, j), x)
    for k in range(network.num_exits):
      changed = not np.array_equal(moved[k], base[k])
      # Stage j's parameters reach exit k exactly when j <= k: the set of
      # parameters exit k depends on grows strictly with k.
      assert changed == (j <= k), (j, k)


def test_independent_exits_share_nothing():
  network, variables, x = _setup('independent')
  base = network.apply(variables, x)
  for j in range(network.num_exits):
    moved = network.apply(_perturb_stage(variables, j), x)
    changed = [not np.array_equal(moved[k], base[k]) for k in range(network.num_exits)]
    assert changed == [k == j for k in range(network.num_exits)]


def test_width_nesting_is_block_lower_triangular():
  network, variables, x = _setup('nested_width')
  # Stage 2 widens block b1: its new channels read all of b1's inputs; the
  # old channels of b1 live in stage 1 and have the old width only.
  old = variables['params']['stages_0']['b1']
  new = variables['params']['stages_1']['b1']
  conv_in = lambda p: [v['kernel'].shape for n, v in p.items() if n.startswith('Conv')]
  assert conv_in(old)[0][2] == 4 and conv_in(old)[0][3] == 8       # reads b0 (4), makes 8
  assert conv_in(new)[0][2] == 8 and conv_in(new)[0][3] == 8       # reads b0 widened (4+4)
  assert conv_in(new)[1][2] == 16                                    # hidden: old 8 + new 8


@pytest.mark.parametrize('name', ANYTIME + ('independent',))
def test_iterate_exits_matches_apply_and_stops(name):
  network, variables, x = _setup(name)
  full = network.apply(variables, x)
  got = list(aj.iterate_exits(network, variables, x))
  assert len(got) == network.num_exits
  np.testing.assert_allclose(np.stack(got), full, rtol=1e-5, atol=1e-5)
  first = next(aj.iterate_exits(network, variables, x))
  np.testing.assert_allclose(first, full[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', models.ARCHITECTURES)
def test_flops_grow_and_nested_growth_rates(name):
  network = models.create(name, num_classes=10)
  x = jnp.zeros((1, 28, 28, 1))
  variables = jax.eval_shape(lambda: network.init(jax.random.key(0), x))
  flops = aj.exit_flops(network, variables, x)
  assert len(flops) == 4 and all(b > a > 0 for a, b in zip(flops, flops[1:]))
  ratios = np.array(flops[1:]) / np.array(flops[:-1])
  # Depth nesting doubles the blocks (about 2x FLOPs); width nesting doubles
  # the channels (about 4x: convolutions are quadratic in width); both: 8x.
  expected = {'nested_depth': (1.8, 3.0), 'nested_width': (2.5, 4.5),
              'nested_both': (5.0, 10.0)}
  if name in expected:
    lo, hi = expected[name]
    assert np.all((ratios > lo) & (ratios < hi)), ratios


def test_flops_match_a_hand_count():
  # One-stage branched net on a 4x4x1 image, width 2, one level: the stem block
  # is conv3x3(1->2) + conv3x3(2->2) + conv1x1 shortcut(1->2), then a dense head.
  network = models.create('branched', num_classes=3, num_exits=1, width=2, num_levels=1)
  x = jnp.zeros((1, 4, 4, 1))
  variables = models.init_variables(network, jax.random.key(0), x)
  # SAME 3x3 taps inside a 4x4 image: 4 corners x 4 + 8 edges x 6 + 4 inner x 9 = 100.
  taps = 100
  macs = taps * 1 * 2 + taps * 2 * 2 + 16 * 1 * 2 + 2 * 3
  flops = aj.exit_flops(network, variables, x)[0]
  # XLA adds the element-wise work: BatchNorm, ReLU, residual add and mean over
  # five [4, 4, 2] activations, well under 15 FLOPs per element.
  assert 2 * macs <= flops < 2 * macs + 15 * 5 * 32


@pytest.mark.parametrize('shape', [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize('name', models.ARCHITECTURES)
def test_standard_input_shapes(name, shape):
  network = models.create(name, num_classes=100, num_exits=2)
  out = jax.eval_shape(lambda: network.apply(network.init(jax.random.key(0), jnp.zeros((2, *shape))),
                                             jnp.zeros((2, *shape))))
  assert out.shape == (2, 2, 100)


def test_early_exit_extremes_and_jit():
  network, variables, x = _setup('nested_width')
  logits = network.apply(variables, x)
  labels = jnp.arange(x.shape[0]) % 5
  flops = aj.exit_flops(network, variables, x)
  never = jax.jit(lambda v, x: aj.early_exit(network, v, x, threshold=0.0))(variables, x)
  assert np.all(never.exits == 0)
  np.testing.assert_array_equal(never.predictions, logits[0].argmax(-1))
  np.testing.assert_allclose(never.flops, flops[0])
  always = aj.early_exit(network, variables, x, threshold=1.1)
  assert np.all(always.exits == network.num_exits - 1)
  np.testing.assert_allclose(np.mean(always.predictions == labels),
                             aj.exit_accuracy(logits, labels)[-1])
  np.testing.assert_allclose(always.flops, flops[-1])


def test_first_confident_exit_by_hand():
  # Exit confidences per sample: sample 0 confident at exit 1, sample 1 at exit 2, sample 2 never.
  logits = jnp.log(jnp.asarray([[[0.9, 0.1], [0.6, 0.4], [0.5, 0.5]],
                                [[0.5, 0.5], [0.95, 0.05], [0.6, 0.4]],
                                [[0.5, 0.5], [0.5, 0.5], [0.7, 0.3]]]))
  np.testing.assert_array_equal(aj.first_confident_exit(logits, 0.85), [0, 1, 2])
  np.testing.assert_array_equal(aj.first_confident_exit(logits, jnp.asarray([0.95, 0.7, 0.0])), [2, 1, 2])


def test_exit_accuracy_and_budgeted_curve():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 400)
  # Exit k is right with probability 0.4 + 0.2 k and more confident when right.
  logits = np.zeros((3, 400, 4), np.float32)
  for k in range(3):
    right = rng.random(400) < 0.4 + 0.2 * k
    guess = np.where(right, labels, (labels + 1) % 4)
    logits[k, np.arange(400), guess] = np.where(right, 3.0, 1.0) + rng.random(400)
  acc = aj.exit_accuracy(jnp.asarray(logits), jnp.asarray(labels))
  np.testing.assert_allclose(acc, (logits.argmax(-1) == labels).mean(-1))
  flops = [1.0, 2.0, 4.0]
  curve = aj.budgeted_batch_curve(logits[:, :200], labels[:200], logits[:, 200:], labels[200:], flops)
  assert curve[0]['flops'] >= 1.0 and curve[-1]['flops'] <= 4.0
  assert curve[-1]['flops'] > curve[0]['flops']
  # The margin separates right from wrong here (3..4 against 1..2), so a budget
  # that sends most samples out early is both cheaper and more accurate than
  # the last exit alone; broken calibration (or scores) would lose that.
  last = (logits[2, 200:].argmax(-1) == labels[200:]).mean()
  assert any(p['flops'] < 3.0 and p['accuracy'] > last + 0.1 for p in curve)
  with pytest.raises(ValueError, match='FLOPs entries'):
    aj.budgeted_batch_curve(logits, labels, logits, labels, [1.0, 2.0])


def test_margin_score_does_not_saturate_where_softmax_does():
  logits = jnp.asarray([[[0.0, 30.0, 1.0], [0.0, 40.0, 2.0], [0.0, 0.5, 0.25]]])
  softmax = np.exp([0.0, 0.5, 0.25]) / np.exp([0.0, 0.5, 0.25]).sum()
  np.testing.assert_array_equal(aj.exit_scores(logits)[0, :2], [1.0, 1.0])
  np.testing.assert_allclose(aj.exit_scores(logits)[0, 2], softmax.max(), rtol=1e-6)
  np.testing.assert_allclose(aj.exit_scores(logits, 'margin'), [[29.0, 38.0, 0.25]])
  with pytest.raises(ValueError, match="'softmax', 'margin'"):
    aj.exit_scores(logits, 'entropy')


def test_calibration_realises_the_target_exit_fractions_on_trained_logits():
  # Logit gaps of 20-60, as a trained network gives: every softmax score is 1.0.
  rng = np.random.default_rng(1)
  n, num_exits = 1000, 4
  logits = np.zeros((num_exits, n, 10), np.float32)
  logits[:, np.arange(n), rng.integers(0, 10, n)] = rng.uniform(20, 60, (num_exits, n))
  labels = logits[-1].argmax(-1)
  assert np.all(np.asarray(aj.exit_scores(logits)) == 1.0)
  curve = aj.budgeted_batch_curve(logits, labels, logits, labels, [1.0, 2.0, 4.0, 8.0])
  for point in curve:
    target = np.asarray(point['target_fractions'])
    counts = np.round(target[:-1] * n)
    expected = np.append(counts, n - counts.sum()) / n
    np.testing.assert_allclose(point['validation_fractions'], expected, atol=1e-12)
  saturated = aj.budgeted_batch_curve(logits, labels, logits, labels, [1.0, 2.0, 4.0, 8.0],
                                      score='softmax')
  assert any(not np.allclose(p['validation_fractions'], p['target_fractions'], atol=0.01)
             for p in saturated)  # why the margin is the default


def test_create_rejects_bad_input():
  with pytest.raises(ValueError, match='Unknown model.*branched'):
    models.create('resnet', num_classes=10)
  with pytest.raises(ValueError, match='num_exits'):
    models.create('branched', num_classes=10, num_exits=0)
  with pytest.raises(ValueError, match='Bad option'):
    models.create('branched', num_classes=10, blocks_per_level=2)
  with pytest.raises(ValueError, match='growth'):
    models.create('independent', num_classes=10, growth='sideways')


def _toy_images(n, seed=0):
  """Class c: its own random 2x2 texture tiled over an 8x8 image, plus noise.

  Local textures survive global average pooling, so even the first exit can learn them.
  """
  rng = np.random.default_rng(seed)
  textures = np.tile(np.random.default_rng(99).choice([-1.0, 1.0], (5, 2, 2)), (1, 4, 4))
  y = rng.integers(0, 5, n)
  x = textures[y][..., None] + rng.normal(0, 0.3, (n, *SHAPE))
  return jnp.asarray(x, jnp.float32), jnp.asarray(y)


# The quick suite trains branched here; nested_width is trained with OSGD by the end-to-end
# digits run (tests/test_train.py) and under nnx.jit (tests/test_nnx.py).
@pytest.mark.parametrize('name', [
    name if name == 'branched' else pytest.param(name, marks=pytest.mark.slow)
    for name in models.ARCHITECTURES])
def test_every_model_trains_with_osgd(name):
  network = models.create(name, num_classes=5, num_exits=3, width=4, **small(name, num_levels=2))
  x, y = _toy_images(64)
  variables = models.init_variables(network, jax.random.key(0), x)
  params, stats = variables['params'], variables.get('batch_stats', {})
  tx = aj.osgd(0.1, momentum=0.9)
  opt_state = tx.init(params)

  def losses(params, stats):
    logits, new = network.apply({'params': params, 'batch_stats': stats}, x, train=True,
                                mutable=['batch_stats'])
    return aj.exit_cross_entropy(logits, y), new.get('batch_stats', {})

  @jax.jit
  def step(params, stats, opt_state):
    jac, l, stats = aj.exit_jacobian(losses, params, stats, has_aux=True)
    updates, opt_state = tx.update(jac, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, l

  first = None
  for _ in range(25):
    params, stats, opt_state, l = step(params, stats, opt_state)
    first = l if first is None else first
  assert np.all(np.isfinite(l))
  assert np.all(l < 0.7 * first), (first, l)


@pytest.mark.parametrize('name', ['branched', 'nested_width', 'nested_depth', 'independent',
                                  'msdnet'])
def test_imagenet_sized_networks_have_a_stem_and_four_levels(name):
  x = jnp.zeros((1, 224, 224, 3))
  options = models.input_options(x.shape[1:])
  assert options == {'stem': True, 'num_levels': 4}
  network = models.create(name, num_classes=1000, num_exits=4, **options, **small(name))
  variables = jax.eval_shape(lambda: network.init(jax.random.key(0), x))
  logits, state = jax.eval_shape(lambda v: network.apply(v, x, capture_intermediates=True,
                                                         mutable=['intermediates']), variables)
  assert logits.shape == (4, 1, 1000)
  sides = {a.shape[1] for a in jax.tree.leaves(state) if a.ndim == 4}
  stems = [leaf for leaf in jax.tree.leaves(variables['params']) if leaf.shape[:2] == (7, 7)]
  # A 7x7 stride-2 convolution (112 pixels), a stride-2 pool, then four levels: 56, 28, 14, 7
  # (the 224-pixel image itself rides in the carry of the independent networks).
  assert {112, 56, 28, 14, 7} <= sides
  assert max(sides - {224, 112}) == 56
  assert len(stems) == (network.num_exits if name == 'independent' else 1)


@pytest.mark.parametrize('name', ['nested_width', 'nested_depth', 'independent'])
def test_a_stem_keeps_exits_independent_of_later_stages(name):
  network = models.create(name, num_classes=5, num_exits=3, width=4, stem=True, num_levels=2)
  x = _normal((2, 16, 16, 1), 1)
  shapes = jax.eval_shape(functools.partial(models.init_variables, network), jax.random.key(0), x)
  variables = jax.tree.map(lambda s: 0.3 * _normal(s.shape, 2), shapes)
  variables['batch_stats'] = jax.tree.map(lambda v: 1.0 + np.abs(v), variables['batch_stats'])
  apply = jax.jit(network.apply)
  base = apply(variables, x)
  for j in range(network.num_exits):
    moved = apply(_perturb_stage(variables, j), x)
    changed = [not np.array_equal(moved[k], base[k]) for k in range(network.num_exits)]
    assert changed == [(k == j) if name == 'independent' else (j <= k)
                       for k in range(network.num_exits)]
