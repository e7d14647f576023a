"""Options that keep a network small in tests: the invariants hold at any size."""

# MSDNet's defaults are its authors' CIFAR configuration (128-channel exits, 4 + 2k layers);
# two-layer first stages and 8-channel exits compile several times faster. The ViT: one block
# per exit and two heads (of 2 channels at the tests' width 4).
SMALL = {'msdnet': dict(growth_rate=2, base=2, step=1, head_channels=8),
         'vit': dict(blocks_per_stage=1, num_heads=2)}

# Models without convolutional resolution levels: `small` drops options such as num_levels.
LEVELLESS = ('vit',)


def small(name: str, **conv_options) -> dict:
  """Extra ``models.create`` options for ``name`` in tests.

  ``conv_options`` (e.g. ``num_levels=2``) apply to the convolutional networks only.
  """
  return {**({} if name in LEVELLESS else conv_options), **SMALL.get(name, {})}
