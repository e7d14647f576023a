"""One jitted training step for anytime networks, per-exit or summed-loss."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from anytime_jax._src.amortize import find_amortized
from anytime_jax._src.combination import find_diagnostics
from anytime_jax._src.jacobian import Gradients, exit_jacobian
from anytime_jax._src.losses import Distillation, distillation_loss, exit_cross_entropy
from anytime_jax.models.network import init_variables
from anytime_jax._src.linen import dropout_key_named, linen_num_stages, staged_exit_jacobian

Metrics = dict[str, jax.Array]
ENGINES = ('staged', 'vmap')
REDUCTIONS = ('sum', 'mean')


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


def summed_loss_gradient(network: nn.Module, variables: Any, x: jax.Array, y: jax.Array,
                         *, reduction: Literal['sum', 'mean'] = 'sum',
                         rng: Optional[jax.Array] = None) -> Gradients:
  """The ordinary gradient of the summed (or averaged) exit losses, in train mode.

  Returns :class:`anytime_jax.Gradients` ``(grads, losses [K], aux)`` with
  plain ``[*leaf.shape]`` gradients and ``aux`` the updated non-parameter
  collections: the summed-loss counterpart of
  :func:`anytime_jax.staged_exit_jacobian`. ``rng`` is the dropout key.

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> variables = aj.models.init_variables(network, jax.random.key(0), x)
  >>> summed = jax.jit(aj.summed_loss_gradient, static_argnums=0)  # the network is static
  >>> grads, loss, aux = summed(network, variables, x, y)
  >>> staged, losses, _ = jax.jit(aj.staged_exit_jacobian, static_argnums=0)(
  ...     network, variables, x, y)
  >>> bool(jnp.allclose(loss, losses))  # the same [K] exit losses
  True
  >>> close = lambda g, s: jnp.allclose(g, s.sum(0), rtol=1e-4, atol=1e-6)  # g = the sum of rows
  >>> all(jax.tree.leaves(jax.tree.map(close, grads, staged)))
  True
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f'reduction must be one of {REDUCTIONS}, got {reduction!r}.')

  num_exits = linen_num_stages(network, variables)
  weights = jnp.full((num_exits,), 1.0 if reduction == 'sum' else 1.0 / num_exits)
  return weighted_loss_gradient(network, variables, x, y, weights, rng=rng)


def weighted_loss_gradient(network: nn.Module, variables: Any, x: jax.Array, y: jax.Array,
                           weights: jax.Array, *, rng: Optional[jax.Array] = None) -> Gradients:
  """The gradient of ``sum_k weights[k] L_k``, in train mode: one backward pass.

  With a ``'global'`` combination's weights it is the combination's update
  (what :func:`anytime_jax.amortize` trains with between refreshes).

  Returns :class:`anytime_jax.Gradients` ``(grads, losses [K], aux)`` as
  :func:`summed_loss_gradient` does; ``weights`` ``[K]`` are not differentiated.
  """
  weights = jax.lax.stop_gradient(weights)

  def loss(params):
    losses, rest = _train_losses(network, params, variables, x, y, rng)
    return jnp.sum(weights.astype(losses.dtype) * losses), (losses, rest)

  grads, (losses, rest) = jax.grad(loss, has_aux=True)(variables['params'])
  return Gradients(grads, losses, rest)


def _train_losses(network: nn.Module, params: Any, variables: Any, x: jax.Array,
                  y: jax.Array, rng: Optional[jax.Array] = None) -> tuple[jax.Array, Any]:
  """``[K]`` exit losses in train mode and the updated non-parameter collections."""
  rest = {c: t for c, t in variables.items() if c != 'params'}
  rngs = None if rng is None else {'dropout': rng}
  with dropout_key_named('pass make_train_step(..., dropout_key=key)'):
    logits, new = network.apply({'params': params, **rest}, x, train=True, mutable=list(rest),
                                rngs=rngs)
  return exit_cross_entropy(logits, y), {**rest, **new}


def vmapped_exit_jacobian(network: nn.Module, variables: Any, x: jax.Array,
                          y: jax.Array, rng: Optional[jax.Array] = None) -> Gradients:
  """Per-exit gradients by :func:`anytime_jax.exit_jacobian` (the plain vmap path).

  Same contract as :func:`anytime_jax.staged_exit_jacobian` in train mode;
  ``rng`` is the whole network's dropout key.
  """
  return exit_jacobian(lambda p: _train_losses(network, p, variables, x, y, rng),
                       variables['params'], has_aux=True)


def _check_updates_fit(updates: Any, params: Any, per_exit: bool) -> None:
  """Fails at trace time when ``tx`` left the exit axis on the updates."""
  for (path, u), p in zip(jax.tree_util.tree_flatten_with_path(updates)[0],
                          jax.tree_util.tree_leaves(params)):
    if jnp.shape(u) != jnp.shape(p):
      hint = ('it received per-exit gradients [K, *param.shape] (per_exit=True) but does not '
              'combine them: put anytime_jax.orthogonalize() (or aj.sum_exits(), another '
              'combination) at the head of the chain, or pass per_exit=False for an ordinary '
              'optimizer on the summed losses' if per_exit else
              'check the optimizer')
      raise ValueError(
          f'The optimizer returned an update of shape {jnp.shape(u)} for parameter '
          f'{jax.tree_util.keystr(path)} of shape {jnp.shape(p)}: {hint}.')


def make_train_step(network: nn.Module, tx: optax.GradientTransformation, *,
                    per_exit: bool = True, engine: Literal['staged', 'vmap'] = 'staged',
                    reduction: Literal['sum', 'mean'] = 'sum',
                    distillation: Optional[Distillation] = None,
                    dropout_key: Optional[jax.Array] = None,
                    ) -> Callable[..., tuple[TrainState, Metrics]]:
  """Builds ``step(state, x, y[, refresh]) -> (state, metrics)``, to be jitted by the caller.

  Args:
    network: the anytime network: ours, or any linen module as described in
      :func:`create_train_state`.
    tx: per-exit transformations (``per_exit=True``, e.g. :func:`anytime_jax.osgd`)
      take ``[K, ...]`` gradients; others (``optax.sgd``) take the gradient of
      the summed or averaged losses.
    per_exit: whether ``tx`` consumes per-exit gradients.
    engine: per-exit gradients from ``'staged'`` (default, the cost floor) or
      ``'vmap'`` (:func:`anytime_jax.exit_jacobian`).
    reduction: ``'sum'`` or ``'mean'`` of the exit losses when not per-exit.
    distillation: distil the last exit into the earlier ones
      (:class:`anytime_jax.Distillation`, :func:`anytime_jax.distillation_loss`):
      each exit's loss gains ``beta tau^2 KL`` to the last exit's softened
      prediction, from one more forward pass in train mode (its BatchNorm
      statistics discarded); per-exit gradients from the staged engine only,
      so it composes with every combination (``aj.sum_exits()`` for the summed
      losses).
    dropout_key: for networks with dropout: step t draws from
      ``fold_in(dropout_key, t)``, so a resumed run draws what it would have
      (the staged engine folds in the stage too; each engine its own masks).

  With an amortized combination (:func:`anytime_jax.amortize` heading
  ``tx``) the step computes per-exit gradients on refresh steps and the
  gradient of the weighted loss between. ``step(state, x, y)`` chooses with
  ``jax.lax.cond`` on the device, one program; ``step(state, x, y,
  refresh=i % N == 0)``, jitted with ``static_argnames='refresh'``, lets the
  caller's own step count choose between two programs, which is what CPUs
  want: XLA's CPU backend ran a branched network's step inside a ``cond``
  about 20 times slower (ours, measured). Either way nothing is read back.

  Returns:
    The step function; metrics hold ``loss`` (sum of exit losses, distillation
    terms included),
    ``exit_losses`` ``[K]`` and, when ``tx`` keeps diagnostics
    (``diagnostics=True``), ``negative_weight``: 1.0 if the combination gave
    some exit a negative weight in a group it reaches, else 0.0.

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> state = aj.create_train_state(network, aj.osgd(0.1), jax.random.key(0), x)
  >>> step = jax.jit(aj.make_train_step(network, aj.osgd(0.1)))
  >>> state, metrics = step(state, x, y)
  >>> int(state.step), metrics['exit_losses'].shape  # [K]
  (1, (2,))
  """
  if engine not in ENGINES:
    raise ValueError(f'engine must be one of {ENGINES}, got {engine!r}.')
  if reduction not in REDUCTIONS:
    raise ValueError(f'reduction must be one of {REDUCTIONS}, got {reduction!r}.')
  if distillation is not None and (not per_exit or engine != 'staged'):
    raise ValueError('distillation needs per-exit gradients from the staged engine '
                     '(per_exit=True, engine="staged"); for the summed losses use '
                     'tx = optax.chain(aj.sum_exits(), ...).')

  def gradients(params, batch_stats, x, y, rng):
    variables = {'params': params, 'batch_stats': batch_stats}
    if not per_exit:
      return summed_loss_gradient(network, variables, x, y, reduction=reduction, rng=rng)
    if distillation is not None:
      rngs = None if rng is None else {'dropout': jax.random.fold_in(rng, -1)}
      with dropout_key_named('pass make_train_step(..., dropout_key=key)'):
        logits, _ = network.apply(variables, x, train=True, mutable=['batch_stats'], rngs=rngs)
      loss_fn = functools.partial(distillation_loss, weight=distillation.weight,
                                  temperature=distillation.temperature)
      return staged_exit_jacobian(network, variables, x, (y, logits[-1]), train=True,
                                  loss_fn=loss_fn, rng=rng)
    if engine == 'staged':
      return staged_exit_jacobian(network, variables, x, y, train=True, rng=rng)
    return vmapped_exit_jacobian(network, variables, x, y, rng)

  def update(state, computed):
    grads, exit_losses, rest = computed
    # Per-exit transformations that weight by loss (AdaLoss) read the losses.
    extra = {'losses': exit_losses} if per_exit else {}
    updates, opt_state = tx.update(grads, state.opt_state, state.params, **extra)
    _check_updates_fit(updates, state.params, per_exit)
    return updates, opt_state, exit_losses, rest

  def step(state: TrainState, x: jax.Array, y: jax.Array, refresh: Optional[bool] = None):
    rng = None if dropout_key is None else jax.random.fold_in(dropout_key, state.step)
    amortized = find_amortized(state.opt_state)
    per_exit_update = lambda: update(state, gradients(state.params, state.batch_stats, x, y, rng))
    if amortized is None:
      updates, opt_state, exit_losses, rest = per_exit_update()
    else:
      if not per_exit or distillation is not None or engine != 'staged':
        raise ValueError('an amortized combination (aj.amortize) needs per_exit=True and the '
                         'staged engine, without distillation.')
      variables = {'params': state.params, 'batch_stats': state.batch_stats}
      weighted_update = lambda: update(state, weighted_loss_gradient(
          network, variables, x, y, amortized.weights, rng=rng))
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
