"""One jitted training step for anytime networks, around a gradient source."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from anytime_jax._src import deprecation
from anytime_jax._src.amortize import find_amortized
from anytime_jax._src.combination import find_diagnostics
from anytime_jax._src.gradients import (GradientSource, staged_gradients, summed_gradients,
                                        vmapped_gradients)
from anytime_jax.models.network import init_variables

Metrics = dict[str, jax.Array]


class TrainState(NamedTuple):
  """Everything a training step reads and writes.

  Example:

  >>> import jax, jax.numpy as jnp, optax, anytime_jax as aj
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> state = aj.create_train_state(network, optax.sgd(0.1), jax.random.key(0), x)
  >>> state._fields
  ('step', 'params', 'batch_stats', 'opt_state')
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any


def create_train_state(network: nn.Module, tx: optax.GradientTransformation,
                       rng: jax.Array, x: jax.Array) -> TrainState:
  """Initializes variables from an example batch ``x`` and the optimizer.

  ``network`` is one of ours or any linen anytime network: a module whose
  ``__call__(x, train=False)`` returns the stacked exit logits ``[K, B, C]``
  (``init`` runs it) and which holds its stages in ``stages`` (see
  :func:`anytime_jax.staged_exit_jacobian`); ``x`` is an input batch (ours:
  images ``[B, H, W, C]``).

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> state = aj.create_train_state(network, aj.osgd(0.1), jax.random.key(0), x)
  >>> int(state.step), sorted(state.batch_stats)
  (0, ['stages_0', 'stages_1'])
  """
  variables = init_variables(network, rng, x)
  params = variables['params']
  return TrainState(jnp.zeros((), jnp.int32), params, variables.get('batch_stats', {}),
                    tx.init(params))


def _check_updates_fit(updates: Any, params: Any, per_exit: bool) -> None:
  """Fails at trace time when ``tx`` left the exit axis on the updates."""
  for (path, u), p in zip(jax.tree_util.tree_flatten_with_path(updates)[0],
                          jax.tree_util.tree_leaves(params)):
    if jnp.shape(u) != jnp.shape(p):
      hint = ('it received per-exit gradients [K, *param.shape] but does not combine them: put '
              'anytime_jax.orthogonalize() (or aj.sum_exits(), another combination) at the '
              'head of the chain, or pass gradients=aj.summed_gradients() for an ordinary '
              'optimizer on the summed losses' if per_exit else
              'check the optimizer')
      raise ValueError(
          f'The optimizer returned an update of shape {jnp.shape(u)} for parameter '
          f'{jax.tree_util.keystr(path)} of shape {jnp.shape(p)}: {hint}.')


def make_train_step(network: nn.Module, tx: optax.GradientTransformation, *,
                    gradients: Optional[GradientSource] = None,
                    dropout_key: Optional[jax.Array] = None,
                    **deprecated: Any) -> Callable[..., tuple[TrainState, Metrics]]:
  """Builds ``step(state, x, y[, refresh]) -> (state, metrics)``, to be jitted by the caller.

  Args:
    network: the anytime network: ours, or any linen module as described in
      :func:`create_train_state`.
    tx: the optimizer. With per-exit gradients (the default) its head combines
      them (:func:`anytime_jax.osgd`, ``optax.chain(aj.pcgrad(), ...)``); with
      :func:`anytime_jax.summed_gradients` it is any optax optimizer.
    gradients: what the step differentiates, a
      :class:`~anytime_jax.GradientSource`: :func:`anytime_jax.staged_gradients`
      (the default: per-exit gradients at the cost floor, with or without
      distillation), :func:`anytime_jax.vmapped_gradients` or
      :func:`anytime_jax.summed_gradients`, or your own.
    dropout_key: for networks with dropout: step t draws from
      ``fold_in(dropout_key, t)``, so a resumed run draws what it would have
      (the staged engine folds in the stage too; each source its own masks).
    **deprecated: ``per_exit``, ``engine``, ``reduction`` and ``distillation``,
      the flags ``gradients`` replaces; accepted with a warning until 0.4.

  With an amortized combination (:func:`anytime_jax.amortize` heading
  ``tx``) the step computes per-exit gradients on refresh steps and the
  gradient of the weighted loss between (the source's ``weighted``).
  ``step(state, x, y)`` chooses with ``jax.lax.cond`` on the device, one
  program; ``step(state, x, y, refresh=i % N == 0)``, jitted with
  ``static_argnames='refresh'``, lets the caller's own step count choose
  between two programs, which is what CPUs want: XLA's CPU backend ran a
  branched network's step inside a ``cond`` about 20 times slower (ours,
  measured). Either way nothing is read back.

  Returns:
    The step function; metrics hold ``loss`` (sum of exit losses, distillation
    terms included), ``exit_losses`` ``[K]`` and, when ``tx`` keeps diagnostics
    (``diagnostics=True``), ``negative_weight``: 1.0 if the combination gave
    some exit a negative weight in a group it reaches, else 0.0.

  Example:

  >>> import jax, jax.numpy as jnp, optax, anytime_jax as aj
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> state = aj.create_train_state(network, aj.osgd(0.1), jax.random.key(0), x)
  >>> step = jax.jit(aj.make_train_step(network, aj.osgd(0.1)))
  >>> state, metrics = step(state, x, y)
  >>> int(state.step), metrics['exit_losses'].shape  # [K]
  (1, (2,))
  >>> summed = aj.make_train_step(network, optax.sgd(0.1), gradients=aj.summed_gradients())
  """
  source = _source(gradients, deprecated)

  def update(state, computed):
    grads, exit_losses, rest = computed
    # Per-exit transformations that weight by loss (AdaLoss) read the losses.
    extra = {'losses': exit_losses} if source.per_exit else {}
    updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
    _check_updates_fit(updates, state.params, source.per_exit)
    return updates, opt_state, exit_losses, rest

  def step(state: TrainState, x: jax.Array, y: jax.Array, refresh: Optional[bool] = None):
    rng = None if dropout_key is None else jax.random.fold_in(dropout_key, state.step)
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    amortized = find_amortized(state.opt_state)
    per_exit_update = lambda: update(state, source.gradients(network, variables, x, y, rng))
    if amortized is None:
      updates, opt_state, exit_losses, rest = per_exit_update()
    else:
      if not source.per_exit or source.weighted is None:
        raise ValueError(f'an amortized combination (aj.amortize) needs per-exit gradients '
                         f'whose losses are the plain exit losses (aj.staged_gradients() or '
                         f'aj.vmapped_gradients()); got gradients={source.name}.')
      weighted = source.weighted
      weighted_update = lambda: update(state, weighted(network, variables, x, y,
                                                       amortized.weights, rng))
      if refresh is None:  # both programs in one; the device picks (no host round trip)
        updates, opt_state, exit_losses, rest = jax.lax.cond(amortized.refresh, per_exit_update,
                                                             weighted_update)
      else:  # the caller's own step count picks one of two programs
        updates, opt_state, exit_losses, rest = (per_exit_update if refresh else
                                                 weighted_update)()
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': jnp.sum(exit_losses), 'exit_losses': exit_losses}
    diagnostics = find_diagnostics(opt_state)
    if diagnostics is not None:
      metrics['negative_weight'] = diagnostics.negative_weight.astype(jnp.float32)
    return TrainState(state.step + 1, params, rest.get('batch_stats', {}), opt_state), metrics

  return step


ENGINES = ('staged', 'vmap')
_FLAGS = ('per_exit', 'engine', 'reduction', 'distillation')


def _source(gradients: Optional[GradientSource], flags: dict) -> GradientSource:
  """The step's gradient source, from ``gradients`` or, until 0.4, the flags it replaces."""
  unknown = set(flags) - set(_FLAGS)
  if unknown:
    raise TypeError(f'make_train_step() got unexpected keyword arguments {sorted(unknown)}.')
  if not flags:
    return staged_gradients() if gradients is None else gradients
  if gradients is not None:
    raise ValueError(f'pass gradients= alone; {sorted(flags)} are the flags it replaces.')
  per_exit, engine = flags.get('per_exit', True), flags.get('engine', 'staged')
  reduction, distillation = flags.get('reduction', 'sum'), flags.get('distillation')
  if engine not in ENGINES:
    raise ValueError(f'engine must be one of {ENGINES}, got {engine!r}.')
  if distillation is not None and (not per_exit or engine != 'staged'):
    raise ValueError('distillation needs per-exit gradients from the staged engine: '
                     'gradients=aj.staged_gradients(distillation=...); for the summed losses '
                     'chain aj.sum_exits() at the head of tx.')
  if not per_exit:
    source = summed_gradients(reduction=reduction)
  elif engine == 'vmap':
    source = vmapped_gradients()
  else:
    source = staged_gradients(distillation=distillation)
  deprecation.warn(f'make_train_step({", ".join(f"{k}=" for k in flags)})',
                   f'make_train_step(..., gradients=aj.{source.name})')
  return source
