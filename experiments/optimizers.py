"""The optimizers `experiments.train` offers, on one schedule and one weight decay."""

from __future__ import annotations

import optax

import anytime_jax as aj

# name -> (per-exit gradients?, orthogonalize options or summed-loss reduction)
_PER_EXIT = {
    'osgd': dict(),
    'osgd_global': dict(granularity='global'),
    'osgd_exit_norm': dict(rescale='exit_norm'),
    'osgd_sum_norm': dict(rescale='sum_norm'),
}
_SUMMED = {'sgd': 'sum', 'sgd_mean': 'mean'}
OPTIMIZERS = tuple(_PER_EXIT) + tuple(_SUMMED)


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
  if name in _PER_EXIT:
    return aj.osgd(lr, momentum=config.momentum, weight_decay=config.weight_decay,
                   **_PER_EXIT[name]), True
  if name in _SUMMED:
    tx = optax.chain(optax.trace(decay=config.momentum),
                     optax.add_decayed_weights(config.weight_decay),
                     optax.scale_by_learning_rate(lr))
    return tx, False
  raise ValueError(f'Unknown optimizer {name!r}; choose one of {", ".join(OPTIMIZERS)}.')


def reduction(name: str) -> str:
  """How a summed-loss optimizer reduces the exit losses."""
  return _SUMMED.get(name, 'sum')
