"""anytime-jax: Orthogonalized SGD and nested anytime networks in JAX.

The public names, by what they are for:

* OSGD and the other ways of combining per-exit gradients, each an optax
  transformation that takes gradients with a leading exit axis
  (:mod:`anytime_jax.combinations`, :mod:`anytime_jax.osgd`);
* per-exit gradients: :func:`exit_jacobian` for any loss function, the staged
  engine for networks written as stages;
* anytime networks (:mod:`anytime_jax.models`), their NNX form, training steps;
* anytime inference: exits one at a time, early exit, FLOPs, budgeted curves.
"""

# Combining per-exit gradients: OSGD (the paper's method) and the other methods.
from anytime_jax.osgd import orthogonalize
from anytime_jax.osgd import osgd
from anytime_jax.osgd import sgd_tail
from anytime_jax.combinations import aligned_mtl
from anytime_jax.combinations import cagrad
from anytime_jax.combinations import config
from anytime_jax.combinations import dualproj
from anytime_jax.combinations import fairgrad
from anytime_jax.combinations import gradvac
from anytime_jax.combinations import gram_weighting
from anytime_jax.combinations import imtl_g
from anytime_jax.combinations import mean_exits
from anytime_jax.combinations import mgda
from anytime_jax.combinations import nash_mtl
from anytime_jax.combinations import pcgrad
from anytime_jax.combinations import sum_exits
from anytime_jax.combinations import upgrad
from anytime_jax.loss_weightings import adaloss
from anytime_jax.loss_weightings import dwa
from anytime_jax.loss_weightings import famo
from anytime_jax.loss_weightings import uncertainty_weighting
from anytime_jax.accumulate import accumulate_exits
from anytime_jax.equilibrium import gradient_equilibrium
# Their states and diagnostics.
from anytime_jax.accumulate import AccumulateExitsState
from anytime_jax.combinations import CombinationDiagnostics
from anytime_jax.combinations import DiagnosedState
from anytime_jax.loss_weightings import AdaLossState
from anytime_jax.loss_weightings import DWAState
from anytime_jax.loss_weightings import FAMOState
from anytime_jax.loss_weightings import UncertaintyState
from anytime_jax.combinations import GradVacState
from anytime_jax.combinations import PCGradState
from anytime_jax.combinations import find_diagnostics
from anytime_jax.gram import Granularity

# Per-exit gradients.
from anytime_jax.jacobian import Gradients
from anytime_jax.jacobian import exit_jacobian
from anytime_jax.staged import StageFn
from anytime_jax.staged import linen_stages
from anytime_jax.staged import staged_exit_jacobian
from anytime_jax.staged import staged_jacobian

# Networks and training.
from anytime_jax import models
from anytime_jax.losses import Distillation
from anytime_jax.losses import distillation_loss
from anytime_jax.losses import exit_cross_entropy
from anytime_jax.nnx_support import AnytimeNNX
from anytime_jax.nnx_support import create_nnx
from anytime_jax.nnx_support import nnx_staged_exit_jacobian
from anytime_jax.nnx_support import nnx_stages
from anytime_jax.training import TrainState
from anytime_jax.training import create_train_state
from anytime_jax.training import make_train_step
from anytime_jax.training import summed_loss_gradient
from anytime_jax.training import weighted_loss_gradient
from anytime_jax.amortize import AmortizedState
from anytime_jax.amortize import amortize
from anytime_jax.amortize import find_amortized

# Anytime inference.
from anytime_jax.anytime import EarlyExit
from anytime_jax.anytime import budgeted_batch_curve
from anytime_jax.anytime import calibrate_thresholds
from anytime_jax.anytime import early_exit
from anytime_jax.anytime import exit_accuracy
from anytime_jax.anytime import exit_flops
from anytime_jax.anytime import exit_scores
from anytime_jax.anytime import first_confident_exit
from anytime_jax.anytime import iterate_exits

__version__ = '0.2.0'

__all__ = [
    # Combining per-exit gradients.
    'orthogonalize',
    'osgd',
    'sgd_tail',
    'adaloss',
    'aligned_mtl',
    'cagrad',
    'config',
    'dualproj',
    'dwa',
    'fairgrad',
    'famo',
    'gradvac',
    'gram_weighting',
    'imtl_g',
    'mean_exits',
    'mgda',
    'nash_mtl',
    'pcgrad',
    'sum_exits',
    'uncertainty_weighting',
    'upgrad',
    'accumulate_exits',
    'gradient_equilibrium',
    'AccumulateExitsState',
    'AdaLossState',
    'CombinationDiagnostics',
    'DiagnosedState',
    'DWAState',
    'FAMOState',
    'UncertaintyState',
    'GradVacState',
    'PCGradState',
    'find_diagnostics',
    'Granularity',
    # Per-exit gradients.
    'Gradients',
    'exit_jacobian',
    'StageFn',
    'linen_stages',
    'staged_exit_jacobian',
    'staged_jacobian',
    # Networks and training.
    'models',
    'exit_cross_entropy',
    'Distillation',
    'distillation_loss',
    'AnytimeNNX',
    'create_nnx',
    'nnx_staged_exit_jacobian',
    'nnx_stages',
    'TrainState',
    'create_train_state',
    'make_train_step',
    'summed_loss_gradient',
    'weighted_loss_gradient',
    'AmortizedState',
    'amortize',
    'find_amortized',
    # Anytime inference.
    'EarlyExit',
    'budgeted_batch_curve',
    'calibrate_thresholds',
    'early_exit',
    'exit_accuracy',
    'exit_flops',
    'exit_scores',
    'first_confident_exit',
    'iterate_exits',
]
