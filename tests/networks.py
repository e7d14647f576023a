"""Options that keep a network small in tests: the invariants hold at any size."""

# MSDNet's defaults are its authors' CIFAR configuration (128-channel exits, 4 + 2k layers);
# two-layer first stages and 8-channel exits compile several times faster.
SMALL = {'msdnet': dict(growth_rate=2, base=2, step=1, head_channels=8)}


def small(name: str) -> dict:
  """Extra ``models.create`` options for ``name`` in tests."""
  return dict(SMALL.get(name, {}))
