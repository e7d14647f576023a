"""anytime-jax: Orthogonalized SGD and nested anytime networks in JAX.

The public names, by what they are for:

* OSGD and the other ways of combining per-exit gradients, each an optax
  transformation that takes gradients with a leading exit axis, all listed in
  :data:`METHODS` (their inner pieces in :mod:`anytime_jax.solvers`, the Gram
  core in :mod:`anytime_jax.gram`);
* per-exit gradients: :func:`exit_jacobian` for any loss function, the staged
  engine for networks written as stages;
* anytime networks (:mod:`anytime_jax.models`), their NNX form, training steps;
* anytime inference: exits one at a time, early exit, FLOPs, budgeted curves.
"""

from anytime_jax._src import deprecation

# Combining per-exit gradients: OSGD (the paper's method) and the other methods.
from anytime_jax._src.methods.osgd import orthogonalize
from anytime_jax._src.methods.osgd import osgd
from anytime_jax._src.methods.osgd import sgd_tail
from anytime_jax._src.methods.balance import aligned_mtl
from anytime_jax._src.methods.min_norm import cagrad
from anytime_jax._src.methods.balance import conflict_free
from anytime_jax._src.methods.min_norm import dualproj
from anytime_jax._src.methods.balance import fairgrad
from anytime_jax._src.methods.projection import gradvac
from anytime_jax._src.combination import gram_weighting
from anytime_jax._src.methods.balance import imtl_g
from anytime_jax._src.methods.summed import mean_exits
from anytime_jax._src.methods.min_norm import mgda
from anytime_jax._src.methods.balance import nash_mtl
from anytime_jax._src.methods.projection import pcgrad
from anytime_jax._src.methods.summed import sum_exits
from anytime_jax._src.methods.min_norm import upgrad
from anytime_jax._src.methods.loss_weightings import adaloss
from anytime_jax._src.methods.loss_weightings import dwa
from anytime_jax._src.methods.loss_weightings import famo
from anytime_jax._src.methods.loss_weightings import uncertainty_weighting
from anytime_jax._src.accumulate import accumulate_exits
from anytime_jax._src.equilibrium import gradient_equilibrium
# Their states and diagnostics.
from anytime_jax._src.accumulate import AccumulateExitsState
from anytime_jax._src.combination import CombinationDiagnostics
from anytime_jax._src.combination import DiagnosedState
from anytime_jax._src.methods.loss_weightings import AdaLossState
from anytime_jax._src.methods.loss_weightings import DWAState
from anytime_jax._src.methods.loss_weightings import FAMOState
from anytime_jax._src.methods.loss_weightings import UncertaintyState
from anytime_jax._src.methods.projection import GradVacState
from anytime_jax._src.methods.projection import PCGradState
from anytime_jax._src.combination import find_diagnostics
from anytime_jax._src.gram import Granularity
from anytime_jax._src.registry import METHODS
from anytime_jax._src.registry import Method

# Per-exit gradients.
from anytime_jax._src.jacobian import Gradients
from anytime_jax._src.jacobian import exit_jacobian
from anytime_jax._src.staged import StageFn
from anytime_jax.models.stages import linen_stages
from anytime_jax._src.linen import staged_exit_jacobian
from anytime_jax._src.staged import staged_jacobian

# Networks and training.
from anytime_jax import gram
from anytime_jax import models
from anytime_jax import solvers
from anytime_jax._src.losses import Distillation
from anytime_jax._src.losses import distillation_loss
from anytime_jax._src.losses import exit_cross_entropy
from anytime_jax.models.nnx import AnytimeNNX
from anytime_jax.models.nnx import create_nnx
from anytime_jax._src.nnx import nnx_staged_exit_jacobian
from anytime_jax._src.nnx import nnx_stages
from anytime_jax._src.training import TrainState
from anytime_jax._src.training import create_train_state
from anytime_jax._src.training import make_train_step
from anytime_jax._src.gradients import GradientSource
from anytime_jax._src.gradients import staged_gradients
from anytime_jax._src.gradients import summed_gradients
from anytime_jax._src.gradients import summed_loss_gradient
from anytime_jax._src.gradients import vmapped_gradients
from anytime_jax._src.gradients import weighted_loss_gradient
from anytime_jax._src.amortize import AmortizedState
from anytime_jax._src.amortize import amortize
from anytime_jax._src.amortize import find_amortized

# Anytime inference.
from anytime_jax._src.inference import EarlyExit
from anytime_jax._src.inference import budgeted_batch_curve
from anytime_jax._src.inference import calibrate_thresholds
from anytime_jax._src.inference import early_exit
from anytime_jax._src.inference import exit_accuracy
from anytime_jax._src.inference import exit_flops
from anytime_jax._src.inference import exit_scores
from anytime_jax._src.inference import first_confident_exit
from anytime_jax._src.inference import iterate_exits

__version__ = '0.2.0'

__all__ = [
    # Combining per-exit gradients.
    'orthogonalize',
    'osgd',
    'sgd_tail',
    'adaloss',
    'aligned_mtl',
    'cagrad',
    'conflict_free',
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
    'METHODS',
    'Method',
    'gram',
    'solvers',
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
    'GradientSource',
    'staged_gradients',
    'summed_gradients',
    'vmapped_gradients',
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


def __getattr__(name: str):
  if name == 'config':  # ConFIG, renamed: `config` read as the trainer's configuration
    deprecation.warn('anytime_jax.config', 'anytime_jax.conflict_free')
    return conflict_free
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


for _old, _sources in {
    'combinations': ('anytime_jax._src.combination', 'anytime_jax._src.solvers',
                     'anytime_jax._src.methods.summed', 'anytime_jax._src.methods.projection',
                     'anytime_jax._src.methods.min_norm', 'anytime_jax._src.methods.balance'),
    'osgd': ('anytime_jax._src.methods.osgd',),
    'loss_weightings': ('anytime_jax._src.methods.loss_weightings',),
    'anytime': ('anytime_jax._src.inference',),
    'staged': ('anytime_jax._src.staged', 'anytime_jax._src.linen', 'anytime_jax.models.stages'),
    'nnx_support': ('anytime_jax._src.nnx', 'anytime_jax.models.nnx'),
    'conv': ('anytime_jax.models.conv',),
    **{name: (f'anytime_jax._src.{name}',) for name in (
        'accumulate', 'amortize', 'equilibrium', 'jacobian', 'losses')},
    'training': ('anytime_jax._src.training', 'anytime_jax._src.gradients'),
}.items():
  deprecation.alias_module(f'{__name__}.{_old}', _sources)
del _old, _sources
