"""The optimizers `experiments.train` offers, on one schedule and one weight decay."""

from __future__ import annotations

import optax

import anytime_jax as aj

# Per-exit combinations (each followed by the same SGD), by name; K is the number of exits.
PER_EXIT = {
    'osgd': lambda k: aj.orthogonalize(),
    'osgd_global': lambda k: aj.orthogonalize(granularity='global'),
    'osgd_exit_norm': lambda k: aj.orthogonalize(rescale='exit_norm'),
    'osgd_sum_norm': lambda k: aj.orthogonalize(rescale='sum_norm'),
    'osgd_vectors': lambda k: aj.orthogonalize(algorithm='vectors'),
    'pcgrad': lambda k: aj.pcgrad(),
    'mgda': lambda k: aj.mgda(),
    'adaloss': lambda k: aj.adaloss(k),
    'upgrad': lambda k: aj.upgrad(),
    'dualproj': lambda k: aj.dualproj(),
    'cagrad': lambda k: aj.cagrad(),
    'imtl_g': lambda k: aj.imtl_g(),
    'aligned_mtl': lambda k: aj.aligned_mtl(),
    'gradvac': lambda k: aj.gradvac(k),
    'nash_mtl': lambda k: aj.nash_mtl(),
}
_SUMMED = {'sgd': 'sum', 'sgd_mean': 'mean'}
OPTIMIZERS = tuple(PER_EXIT) + tuple(_SUMMED)


def schedule(config, total_steps: int, steps_per_epoch: int) -> optax.Schedule:
  """Linear warmup to the peak learning rate, then cosine decay to zero."""
  warmup = min(int(config.warmup_epochs * steps_per_epoch), max(total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, warmup,
                                            max(total_steps, warmup + 1))


def make(name: str, config, total_steps: int, steps_per_epoch: int):
  """Returns ``(tx, per_exit)``: the transformation and whether it takes per-exit gradients.

  Every optimizer is SGD with momentum and decoupled weight decay on the same
  schedule; they differ only in how the exits' gradients are combined.
  """
  lr = schedule(config, total_steps, steps_per_epoch)
  tail = aj.sgd_tail(lr, config.momentum, weight_decay=config.weight_decay)
  if name in PER_EXIT:
    return optax.chain(PER_EXIT[name](config.num_exits), tail), True
  if name in _SUMMED:
    return tail, False
  raise ValueError(f'Unknown optimizer {name!r}; choose one of {", ".join(OPTIMIZERS)}.')


def reduction(name: str) -> str:
  """How a summed-loss optimizer reduces the exit losses."""
  return _SUMMED.get(name, 'sum')
