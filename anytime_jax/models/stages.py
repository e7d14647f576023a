"""Our linen networks as plain stages, for :func:`anytime_jax.staged_jacobian`."""

from __future__ import annotations

from typing import Any

from anytime_jax._src.staged import StageFn
from anytime_jax.models.network import AnytimeNetwork, apply_stage, stage_variables


def linen_stages(network: AnytimeNetwork, variables: Any, *, train: bool = True
                 ) -> tuple[list[StageFn], list[Any], list[Any]]:
  """Our linen networks as stages: ``(stages, params, states)`` for :func:`staged_jacobian`.

  Stage k's parameters are ``variables['params']['stages_k']`` and its state
  every other collection of it (BatchNorm statistics and any other), updated
  in train mode. A stage called with ``rng=key`` hands ``{'dropout': key}`` to
  ``Module.apply``.

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> variables = aj.models.init_variables(network, jax.random.key(0), x)
  >>> stages, params, states = aj.linen_stages(network, variables)
  >>> len(stages)
  2
  >>> loss = lambda k, logits: aj.exit_cross_entropy(logits[None], y)[0]  # exit k's
  >>> carry = aj.models.initial_carry(x)
  >>> grads, losses, aux = aj.staged_jacobian(stages, params, carry, loss, states)
  >>> losses.shape
  (2,)
  """
  stages, params, states = [], [], []
  for k in range(network.num_exits):
    stage_vars = stage_variables(variables, k)
    if 'params' not in stage_vars:
      raise ValueError(f'variables lack params for stage {k} (stages_{k}); pass the '
                       'variables returned by network.init.')

    def stage(p, state, carry, rng=None, k=k):
      rngs = None if rng is None else {'dropout': rng}
      return apply_stage(network, {'params': p, **state}, k, carry, train, rngs)

    stages.append(stage)
    params.append(stage_vars['params'])
    states.append({c: t for c, t in stage_vars.items() if c != 'params'})
  return stages, params, states
