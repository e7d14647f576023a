"""MSDNet on the stage abstraction: its channel arithmetic, its layers' shapes and bad options.

The invariants every anytime network keeps (exit k independent of later stages, anytime
inference, FLOPs) run over MSDNet in tests/test_models.py, tests/test_staged.py and
tests/test_nnx.py with the other architectures.
"""

import functools

import jax
import jax.numpy as jnp
import pytest

from anytime_jax import models
from anytime_jax.models import msdnet


def _carries(network, x):
  """Shapes of the carry after every stage, without computing anything."""
  variables = jax.eval_shape(functools.partial(network.init, train=False), jax.random.key(0), x)
  carry, out = models.initial_carry(x), []
  for k in range(network.num_exits):
    carry, logits, _ = jax.eval_shape(
        functools.partial(models.apply_stage, network, k=k),
        models.stage_variables(variables, k), carry=carry)
    out.append(({name: a.shape for name, a in carry['out'].items()}, logits.shape))
  return variables, out


def test_the_authors_cifar_configuration_by_hand():
  # nChannels 16, growthRate 6, base 4, step 2, 7 blocks: N = 16 layers, pruning interval
  # ceil(16 / 3) = 6. Base channels: 16 + 4 * 6 = 40 after block 1, 52 after block 2;
  # layer 7 drops scale 0, so 52 + 6 = 58 -> floor(29) = 29, + 6 = 35; then 47, 59;
  # layer 13 drops scale 1: 59 + 6 = 65 -> 32, + 6 = 38; then 50. Scale s has 2**s times that.
  base = [40, 52, 35, 47, 59, 38, 50]
  scales = [(0, 1, 2), (0, 1, 2), (1, 2), (1, 2), (1, 2), (2,), (2,)]
  network = models.create('msdnet', num_classes=100, num_exits=7)
  _, carries = _carries(network, jnp.zeros((2, 32, 32, 3)))
  for (carry, logits), c, alive in zip(carries, base, scales):
    assert logits == (2, 100)
    assert carry == {f'scale{s}': (2, 32 // 2 ** s, 32 // 2 ** s, c * 2 ** s) for s in alive}


def test_a_dense_layers_convolutions_by_hand():
  # Width 16, growth rate 6, one stage of one layer at three scales; a bottleneck is as wide as
  # min(input channels, bottleneck_factor * channels added). Scale 0 adds 6 channels
  # (bottleneck min(16, 1 * 6) = 6). Scale 1 adds 6 * 2 = 12: 6 from scale 0 strided
  # (min(16, 1 * 6) = 6) and 6 from scale 1 (min(32, 2 * 6) = 12). Scale 2 adds 24: 12 from
  # scale 1 strided (min(32, 2 * 12) = 24) and 12 from scale 2 (min(64, 4 * 12) = 48).
  network = models.create('msdnet', num_classes=10, num_exits=1, base=1)
  variables, carries = _carries(network, jnp.zeros((1, 32, 32, 3)))
  kernels = [leaf.shape for path, leaf in
             jax.tree_util.tree_flatten_with_path(variables['params']['stages_0'])[0]
             if 'Conv' in jax.tree_util.keystr(path)]
  stem = [(3, 3, 3, 16), (3, 3, 16, 32), (3, 3, 32, 64)]
  layer = [(1, 1, 16, 6), (3, 3, 6, 6),                          # scale 0
           (1, 1, 16, 6), (3, 3, 6, 6), (1, 1, 32, 12), (3, 3, 12, 6),   # scale 1
           (1, 1, 32, 24), (3, 3, 24, 12), (1, 1, 64, 48), (3, 3, 48, 12)]  # scale 2
  head = [(3, 3, 88, 128), (3, 3, 128, 128)]
  assert sorted(kernels) == sorted(stem + layer + head)
  assert carries[0][0] == {'scale0': (1, 32, 32, 22), 'scale1': (1, 16, 16, 44),
                           'scale2': (1, 8, 8, 88)}


def test_exits_read_28x28_images_and_two_scales():
  network = models.create('msdnet', num_classes=10, num_exits=3, width=4, num_levels=2)
  _, carries = _carries(network, jnp.zeros((1, 28, 28, 1)))
  # N = 4 + 2 + 2 = 8 layers, interval ceil(8 / 2) = 4: layer 5 (stage 2's first) drops scale 0.
  assert [sorted(c) for c, _ in carries] == [['scale0', 'scale1'], ['scale1'], ['scale1']]
  assert carries[-1][0]['scale1'][1:3] == (14, 14)


@pytest.mark.parametrize('options, match', [
    (dict(growth_factor=(1, 2)), 'growth_factor needs 3'),
    (dict(bottleneck_factor=(1, 0, 4)), 'bottleneck_factor needs 3'),
    (dict(growth_rate=0), 'growth_rate must be a positive integer'),
    (dict(step=1.5), 'step must be a positive integer'),
    (dict(reduction=1.5), r'reduction must be in \[0, 1\]'),
    (dict(growth_rate=1, growth_factor=(1, 1, 1)), 'raise growth_rate'),
    (dict(growth='width'), "Bad option for model 'msdnet'"),
])
def test_bad_options_name_the_fix(options, match):
  with pytest.raises(ValueError, match=match):
    models.create('msdnet', num_classes=10, **options)


def test_no_reduction_keeps_every_channel():
  stages = msdnet.plan(7, 16, reduction=0.0)
  assert not any(isinstance(l, msdnet.Transition) for s in stages for l in s.layers)
  network = models.create('msdnet', num_classes=10, num_exits=7, reduction=0.0)
  _, carries = _carries(network, jnp.zeros((1, 32, 32, 3)))
  assert carries[-1][0] == {'scale2': (1, 8, 8, (16 + 16 * 6) * 4)}
