"""Per-exit gradients at the cost floor: the staged engine.

Exit k's loss touches only stages 1..k, so stage s needs one VJP for each exit
``>= s``. The staged engine runs the stages forward once, keeping each stage's
VJP, then walks back from the last stage carrying a stack of carry cotangents
that holds only the exits reaching that stage. All K backward walks share the
one forward pass and its residuals. A plain ``vmap`` over K
cotangents (:func:`anytime_jax.exit_jacobian`) instead pushes every exit
through every stage, including the stages after it, where its cotangent is zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp

from anytime_jax.losses import cross_entropy
from anytime_jax.models.network import (AnytimeNetwork, apply_stage, initial_carry,
                                        stage_variables)


def staged_exit_jacobian(
    network: AnytimeNetwork,
    variables: Any,
    x: jax.Array,
    y: jax.Array,
    *,
    train: bool = True,
    loss_fn: Optional[Callable[[jax.Array, jax.Array], jax.Array]] = None,
    vectorize: bool = False,
) -> tuple[Any, jax.Array, Any]:
  """Per-exit gradients of an anytime network, stage by stage.

  Args:
    network: a network from :func:`anytime_jax.models.create`.
    variables: its variables (``params`` and, for BatchNorm, ``batch_stats``).
    x: inputs ``[B, H, W, C]``.
    y: labels ``[B]`` (anything ``loss_fn`` accepts).
    train: training mode: BatchNorm normalizes with batch statistics and the
      updated statistics are returned (once per step, as in ordinary training).
    loss_fn: ``loss_fn(logits [B, C], y) -> scalar``, the loss of one exit;
      default mean softmax cross-entropy with integer labels.
    vectorize: push the exits' cotangents through a stage's backward pass as
      one ``vmap`` (batched kernels) instead of one backward call per exit
      (default). Both share the forward residuals; on CPU the per-exit calls
      measured faster (``python -m experiments.bench``), accelerators may differ.

  Returns:
    ``(jac, losses, batch_stats)``: ``jac`` has the structure of
    ``variables['params']`` with every leaf ``[K, *leaf.shape]`` (row k: the
    gradient of exit k's loss; exactly zero for stages after k); ``losses``
    is ``[K]``; ``batch_stats`` the updated statistics (the old ones in eval
    mode, ``{}`` without BatchNorm).
  """
  loss_fn = cross_entropy if loss_fn is None else loss_fn
  num_exits = network.num_exits
  carry = initial_carry(x)
  vjps, out_carries, losses, stats = [], [], [], {}
  for k in range(num_exits):
    stage_vars = stage_variables(variables, k)
    if 'params' not in stage_vars:
      raise ValueError(f'variables lack params for stage {k} (stages_{k}); pass the '
                       'variables returned by network.init.')
    rest = {c: t for c, t in stage_vars.items() if c != 'params'}

    def run(params, carry, k=k, rest=rest):
      new_carry, logits, new_stats = apply_stage(network, {'params': params, **rest}, k,
                                                 carry, train)
      return (new_carry, loss_fn(logits, y)), new_stats

    if k == 0:
      # The images need no cotangent: differentiate the first stage's params only.
      (carry, loss), vjp, new_stats = jax.vjp(lambda p, c=carry: run(p, c),
                                              stage_vars['params'], has_aux=True)
    else:
      (carry, loss), vjp, new_stats = jax.vjp(run, stage_vars['params'], carry, has_aux=True)
    vjps.append(vjp)
    out_carries.append(carry)
    losses.append(loss)
    stats[f'stages_{k}'] = new_stats

  jac = {}
  arriving = []  # per later exit: its cotangent on stage k's output carry
  for k in reversed(range(num_exits)):
    # Exit k enters here with d loss_k / d loss_k = 1 and nothing on the carry;
    # the later exits bring their carry cotangents and nothing on loss_k.
    one, zero = jnp.ones((), losses[k].dtype), jnp.zeros((), losses[k].dtype)
    stack = [(jax.tree.map(jnp.zeros_like, out_carries[k]), one)]
    stack += [(ct, zero) for ct in arriving]
    if vectorize:
      batched = jax.vmap(vjps[k])(jax.tree.map(lambda *a: jnp.stack(a), *stack))
      param_cts = batched[0]
      arriving = [jax.tree.map(lambda a, i=i: a[i], batched[1]) for i in range(len(stack))] if k else []
    else:
      outs = [vjps[k](ct) for ct in stack]
      param_cts = jax.tree.map(lambda *a: jnp.stack(a), *[o[0] for o in outs])
      arriving = [o[1] for o in outs] if k else []
    jac[f'stages_{k}'] = jax.tree.map(
        lambda g, k=k: jnp.concatenate([jnp.zeros((k, *g.shape[1:]), g.dtype), g]), param_cts)
  jac = {name: jac[name] for name in variables['params']}
  batch_stats = stats if 'batch_stats' in variables else {}
  return jac, jnp.stack(losses), batch_stats
