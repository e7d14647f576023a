"""What every run of a study shares, and each run's training configuration."""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

from experiments import optimizers, train
from experiments.study.keys import RunKey

# Study models that are one of the library's networks with options: name -> (network, fields).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    'independent_depth': ('independent', {'growth': 'depth'})}


# The studies' method labels are the trainer's names when they ran (0.2): the ones renamed
# since, and `osgd`, which was per-tensor OSGD then and is the library's exit-aware one now.
STUDY_LABELS = {**optimizers.RENAMED, 'osgd': 'osgd_leaf'}


def method_variant(method: str) -> tuple[str, dict[str, Any]]:
  """A study method label as the trainer's optimizer and options.

  Labels keep their meaning of the run (:data:`STUDY_LABELS`);
  ``<label>_every<N>`` is the method with its combination's weights refreshed
  every N steps (``--refresh_every N``, :func:`anytime_jax.amortize`).
  """
  label, every, n = method.rpartition('_every')
  if every and n.isdigit():
    return STUDY_LABELS.get(label, label), {'refresh_every': int(n)}
  return STUDY_LABELS.get(method, method), {}


@dataclasses.dataclass(frozen=True)
class Regime:
  """What every run of a study shares: data, length and schedule."""
  dataset: str
  epochs: int
  train_size: Optional[int] = None  # None: the whole training split less validation
  batch_size: int = 128
  max_steps_per_epoch: Optional[int] = None
  warmup_fraction: float = 0.05  # of all steps, linear, then cosine decay
  width: Optional[int] = None  # base width of the nested and independent networks (None: default)
  width_factor: tuple = (('branched', 4),)  # a model's width is this times the base width
  fixed_widths: tuple = ()  # (model, width) pairs that override the base width

  def model_width(self, model: str) -> Optional[int]:
    if model in dict(self.fixed_widths):
      return dict(self.fixed_widths)[model]
    return None if self.width is None else self.width * dict(self.width_factor).get(model, 1)

  def doubled(self) -> Regime:
    """The same regime at twice the epochs (where :class:`RunKey` ``doubled`` runs train)."""
    return dataclasses.replace(self, epochs=2 * self.epochs)

  def config(self, model: str, method: str, learning_rate: float, seed: int, num_exits: int,
             eval_every: int = 0) -> train.Config:
    network, fields = VARIANTS.get(model, (model, {}))
    optimizer, method_fields = method_variant(method)
    return train.Config(
        width=self.model_width(model), **fields, **method_fields,
        model=network, optimizer=optimizer, dataset=self.dataset, epochs=self.epochs,
        batch_size=self.batch_size, learning_rate=learning_rate,
        warmup_epochs=self.warmup_fraction * self.epochs, num_exits=num_exits,
        train_size=self.train_size, max_steps_per_epoch=self.max_steps_per_epoch, seed=seed,
        eval_every=eval_every)

  def run_config(self, key: RunKey, num_exits: int) -> train.Config:
    """The configuration of a study run (at twice the epochs for a ``doubled`` key)."""
    regime = self.doubled() if key.doubled else self
    return regime.config(key.model, key.method, key.rate, key.seed, num_exits)
