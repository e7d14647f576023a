"""anytime-jax: Orthogonalized SGD and nested anytime networks in JAX."""

from anytime_jax import models
from anytime_jax.accumulate import accumulate_exits
from anytime_jax.baselines import adaloss
from anytime_jax.baselines import mean_exits
from anytime_jax.baselines import mgda
from anytime_jax.baselines import pcgrad
from anytime_jax.baselines import sum_exits
from anytime_jax.anytime import EarlyExit
from anytime_jax.anytime import budgeted_batch_curve
from anytime_jax.anytime import calibrate_thresholds
from anytime_jax.anytime import early_exit
from anytime_jax.anytime import exit_accuracy
from anytime_jax.anytime import exit_flops
from anytime_jax.anytime import exit_scores
from anytime_jax.anytime import first_confident_exit
from anytime_jax.anytime import iterate_exits
from anytime_jax.jacobian import exit_jacobian
from anytime_jax.losses import exit_cross_entropy
from anytime_jax.nnx_support import AnytimeNNX
from anytime_jax.nnx_support import create_nnx
from anytime_jax.nnx_support import nnx_staged_exit_jacobian
from anytime_jax.nnx_support import nnx_stages
from anytime_jax.osgd import OrthogonalizeState
from anytime_jax.osgd import orthogonalize
from anytime_jax.osgd import osgd
from anytime_jax.osgd import sgd_tail
from anytime_jax.staged import linen_stages
from anytime_jax.staged import staged_exit_jacobian
from anytime_jax.staged import staged_jacobian
from anytime_jax.training import TrainState
from anytime_jax.training import create_train_state
from anytime_jax.training import make_train_step
from anytime_jax.training import summed_loss_gradient
from anytime_jax.weightings import aligned_mtl
from anytime_jax.weightings import cagrad
from anytime_jax.weightings import dualproj
from anytime_jax.weightings import gradvac
from anytime_jax.weightings import gram_weighting
from anytime_jax.weightings import imtl_g
from anytime_jax.weightings import nash_mtl
from anytime_jax.weightings import upgrad

__version__ = '0.1.0'

__all__ = [
    'AnytimeNNX',
    'EarlyExit',
    'create_nnx',
    'nnx_staged_exit_jacobian',
    'nnx_stages',
    'accumulate_exits',
    'aligned_mtl',
    'cagrad',
    'dualproj',
    'gradvac',
    'gram_weighting',
    'imtl_g',
    'nash_mtl',
    'upgrad',
    'adaloss',
    'mean_exits',
    'mgda',
    'pcgrad',
    'sgd_tail',
    'sum_exits',
    'OrthogonalizeState',
    'TrainState',
    'budgeted_batch_curve',
    'calibrate_thresholds',
    'create_train_state',
    'early_exit',
    'exit_accuracy',
    'exit_flops',
    'exit_scores',
    'first_confident_exit',
    'iterate_exits',
    'make_train_step',
    'models',
    'exit_cross_entropy',
    'exit_jacobian',
    'orthogonalize',
    'osgd',
    'linen_stages',
    'staged_exit_jacobian',
    'staged_jacobian',
    'summed_loss_gradient',
]
