"""The inner pieces the methods are made of: weights and coefficients from a Gram matrix.

Each maps a ``[K, K]`` Gram matrix of per-exit gradients to what its method
combines them with, on device and jittable, for those who build their own
combination with :func:`anytime_jax.gram_weighting`.
"""

from anytime_jax._src.combination import Solution
from anytime_jax._src.methods.balance import aligned_mtl_weights
from anytime_jax._src.methods.balance import conflict_free_weights
from anytime_jax._src.methods.balance import fairgrad_weights
from anytime_jax._src.methods.balance import imtl_g_weights
from anytime_jax._src.methods.balance import nash_mtl_weights
from anytime_jax._src.methods.min_norm import cagrad_weights
from anytime_jax._src.methods.osgd import gram_schmidt_coefficients
from anytime_jax._src.methods.osgd import gram_schmidt_vectors
from anytime_jax._src.methods.osgd import rescale_coefficients
from anytime_jax._src.methods.projection import gradvac_coefficients
from anytime_jax._src.methods.projection import pcgrad_coefficients
from anytime_jax._src.solvers import box_qp
from anytime_jax._src.solvers import min_norm_weights
from anytime_jax._src.solvers import project_to_simplex

__all__ = [
    'Solution',
    'aligned_mtl_weights',
    'box_qp',
    'cagrad_weights',
    'conflict_free_weights',
    'fairgrad_weights',
    'gradvac_coefficients',
    'gram_schmidt_coefficients',
    'gram_schmidt_vectors',
    'imtl_g_weights',
    'min_norm_weights',
    'nash_mtl_weights',
    'pcgrad_coefficients',
    'project_to_simplex',
    'rescale_coefficients',
]
