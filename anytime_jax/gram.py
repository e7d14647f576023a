"""Gram matrices of per-exit gradients, per group of leaves, and the weighted sum back.

Every combination is built on these: :func:`exit_grams` groups the leaves by
``granularity`` and contracts each group to a ``[K, K]`` Gram matrix,
:func:`combine` sums the per-exit gradients with ``[G, K]`` weights, and
:func:`average_over` averages them over a device axis first.
"""

from anytime_jax._src.gram import Granularity
from anytime_jax._src.gram import average_over
from anytime_jax._src.gram import combine
from anytime_jax._src.gram import exit_grams

__all__ = ['Granularity', 'average_over', 'combine', 'exit_grams']
