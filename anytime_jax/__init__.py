"""anytime-jax: Orthogonalized SGD and nested anytime networks in JAX."""

from anytime_jax.jacobian import exit_jacobian
from anytime_jax.losses import exit_cross_entropy
from anytime_jax.osgd import OrthogonalizeState
from anytime_jax.osgd import orthogonalize
from anytime_jax.osgd import osgd

__version__ = '0.1.0'

__all__ = [
    'OrthogonalizeState',
    'exit_cross_entropy',
    'exit_jacobian',
    'orthogonalize',
    'osgd',
]
