"""anytime-jax: Orthogonalized SGD and nested anytime networks in JAX."""

from anytime_jax import models
from anytime_jax.anytime import EarlyExit
from anytime_jax.anytime import budgeted_batch_curve
from anytime_jax.anytime import early_exit
from anytime_jax.anytime import exit_accuracy
from anytime_jax.anytime import exit_flops
from anytime_jax.anytime import first_confident_exit
from anytime_jax.anytime import iterate_exits
from anytime_jax.jacobian import exit_jacobian
from anytime_jax.losses import exit_cross_entropy
from anytime_jax.osgd import OrthogonalizeState
from anytime_jax.osgd import orthogonalize
from anytime_jax.osgd import osgd

__version__ = '0.1.0'

__all__ = [
    'EarlyExit',
    'OrthogonalizeState',
    'budgeted_batch_curve',
    'early_exit',
    'exit_accuracy',
    'exit_flops',
    'first_confident_exit',
    'iterate_exits',
    'models',
    'exit_cross_entropy',
    'exit_jacobian',
    'orthogonalize',
    'osgd',
]
