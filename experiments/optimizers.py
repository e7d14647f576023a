"""The optimizers `experiments.train` offers, on one schedule and one weight decay."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Literal

import optax

import anytime_jax as aj

# Per-exit combinations (each followed by the same SGD), by name: the factory and its options.
# `osgd` is the library's `aj.orthogonalize()` (exit-aware groups); the `osgd_leaf*` variants
# orthogonalize per tensor. The other methods the first study and the screen ran combine the
# whole parameter vector ('global'), as they did then; every other registered method runs at the
# library's defaults under its own name (added below, so a new method needs no line here).
PER_EXIT: dict[str, tuple[Callable[..., optax.GradientTransformationExtraArgs], dict[str, Any]]] = {
    'osgd': (aj.orthogonalize, {}),
    'osgd_global': (aj.orthogonalize, dict(granularity='global')),
    'osgd_leaf': (aj.orthogonalize, dict(granularity='leaf')),
    'osgd_leaf_exit_norm': (aj.orthogonalize, dict(granularity='leaf', rescale='exit_norm')),
    'osgd_leaf_sum_norm': (aj.orthogonalize, dict(granularity='leaf', rescale='sum_norm')),
    'osgd_leaf_vectors': (aj.orthogonalize, dict(granularity='leaf', algorithm='vectors')),
    'pcgrad': (aj.pcgrad, dict(granularity='global')),
    'mgda': (aj.mgda, dict(granularity='global')),
    'upgrad': (aj.upgrad, dict(granularity='global')),
    'dualproj': (aj.dualproj, dict(granularity='global')),
    'cagrad': (aj.cagrad, dict(granularity='global')),
    'imtl_g': (aj.imtl_g, dict(granularity='global')),
    'aligned_mtl': (aj.aligned_mtl, dict(granularity='global', scale='mean')),
    'gradvac': (aj.gradvac, dict(granularity='global')),
    'nash_mtl': (aj.nash_mtl, dict(granularity='global')),
    'uncertainty': (aj.uncertainty_weighting, {}),
}
_LISTED = {factory for factory, _ in PER_EXIT.values()}
PER_EXIT.update({name: (method.factory, {}) for name, method in aj.METHODS.items()
                 if method.factory not in _LISTED and method.family != 'summed'})
# Names of 0.2, accepted with a warning until 0.4 (`osgd` itself now means the library's OSGD).
RENAMED = {'osgd_exits': 'osgd', 'osgd_exit_norm': 'osgd_leaf_exit_norm',
           'osgd_sum_norm': 'osgd_leaf_sum_norm', 'osgd_vectors': 'osgd_leaf_vectors',
           'config': 'conflict_free'}


def current_name(name: str) -> str:
  """``name``, or the name a renamed optimizer has now (with a warning)."""
  if name in RENAMED:
    warnings.warn(f'--optimizer {name} is now {RENAMED[name]}; the old name goes in 0.4.',
                  DeprecationWarning, stacklevel=2)
    return RENAMED[name]
  return name


def per_exit_head(name: str, num_exits: int) -> optax.GradientTransformationExtraArgs:
  """The per-exit combination ``name`` for K exits, keeping diagnostics (its weights)."""
  factory, options = PER_EXIT[name]
  return factory(**options, num_exits=num_exits, diagnostics=True)


_SUMMED: dict[str, Literal['sum', 'mean']] = {'sgd': 'sum', 'sgd_mean': 'mean'}
OPTIMIZERS = tuple(PER_EXIT) + tuple(_SUMMED)


def schedule(config, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup to the peak learning rate, then cosine decay to zero."""
  warmup = min(int(config.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                            max(total_steps, warmup + 1))


def make(name: str, config, total_steps: int, steps_per_epoch: int
         ) -> tuple[optax.GradientTransformation, aj.GradientSource]:
  """Returns ``(tx, gradients)``: the transformation and the gradient source it takes.

  Every optimizer is SGD with momentum and decoupled weight decay on the same
  schedule; they differ only in how the exits' gradients are combined. With
  ``config.gradient_equilibrium`` the per-exit gradients are rescaled first
  (:func:`anytime_jax.gradient_equilibrium`); it and ``config.distillation``
  need per-exit gradients, so the summed-loss baselines then run as
  ``aj.sum_exits()`` / ``aj.mean_exits()`` (the same step). With
  ``config.refresh_every`` N > 1 a global combination's weights are refreshed
  every N steps (:func:`anytime_jax.amortize`).
  """
  lr = schedule(config, total_steps, steps_per_epoch)
  tail = aj.sgd_tail(lr, momentum=config.momentum, weight_decay=config.weight_decay)
  distillation = (aj.Distillation(config.distillation, config.distillation_temperature)
                  if config.distillation > 0 else None)
  per_exit_needed = config.gradient_equilibrium or distillation is not None
  if name in PER_EXIT:
    head = per_exit_head(name, config.num_exits)
    if config.refresh_every > 1:
      if PER_EXIT[name][1].get('granularity') != 'global' or per_exit_needed:
        raise ValueError(f'--refresh_every needs a global combination (osgd_global, pcgrad, '
                         f'mgda, ...) without --gradient_equilibrium or --distillation; got '
                         f'{name}.')
      head = aj.amortize(head, every=config.refresh_every, num_exits=config.num_exits)
  elif config.refresh_every > 1:
    raise ValueError(f'--refresh_every amortizes a combination\'s weights; {name} has none.')
  elif name in _SUMMED and per_exit_needed:
    head = aj.sum_exits() if _SUMMED[name] == 'sum' else aj.mean_exits()
  elif name in _SUMMED:
    return tail, aj.summed_gradients(reduction=_SUMMED[name])
  else:
    raise ValueError(f'Unknown optimizer {name!r}; choose one of {", ".join(OPTIMIZERS)}.')
  gradients = aj.staged_gradients(distillation=distillation)
  if config.gradient_equilibrium:
    return optax.chain(aj.gradient_equilibrium(), head, tail), gradients
  return optax.chain(head, tail), gradients
