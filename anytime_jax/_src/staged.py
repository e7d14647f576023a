"""Per-exit gradients at the cost floor: the staged engine, for any sequence of stages.

Exit k's loss touches only stages 1..k, so stage s needs one VJP for each exit
``>= s``. The staged engine runs the stages forward once, keeping each stage's
VJP, then walks back from the last stage carrying a stack of carry cotangents
that holds only the exits reaching that stage. All K backward walks share the
one forward pass and its residuals. A plain ``vmap`` over K cotangents
(:func:`anytime_jax.exit_jacobian`) instead pushes every exit through every
stage, including the stages after it, where its cotangent is zero.

A stage is any pure function ``stage(params_k, state_k, carry) -> (carry,
logits_k, state_k)``: ``params_k`` is what is differentiated, ``state_k``
anything it reads and updates without gradient (BatchNorm statistics; ``None``
if it has none) and ``carry`` whatever later stages read (any pytree). Stages
that draw randomness (dropout) also take a keyword ``rng``: pass ``rng=`` to
:func:`staged_jacobian` and stage k receives ``jax.random.fold_in(rng, k)``.
:func:`staged_jacobian` takes such stages; ``anytime_jax.linen_stages`` turns one
of our networks into them, and ``anytime_jax.nnx_stages`` does the same for
Flax NNX modules.

Parameters several stages use (a tied head, a shared embedding) must get, for
each exit, the sum of their uses by the stages it reaches. Underneath every
front end, :func:`staged_walk` gives each stage all parameter leaves, reads
from the stage's jaxpr which of them it uses and differentiates it with
respect to those only, so such a parameter is one leaf with every use summed:
whole linen modules (``anytime_jax.staged_exit_jacobian``) and NNX models
(``anytime_jax.nnx_staged_exit_jacobian``) need nothing declared, plain stages
declare them with ``shared=``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp

from anytime_jax._src.jacobian import Gradients

StageFn = Callable[..., tuple[Any, jax.Array, Any]]
"""``stage(params_k, state_k, carry[, shared=..., rng=key]) -> (carry, logits_k [B, C], state_k)``."""

CONTRACT = ('a stage is stage(params_k, state_k, carry) -> (carry, logits_k, state_k): three '
            'values, state_k None if the stage keeps none')


def stage_output(output: Any, which: str, arity: int = 3, contract: str = CONTRACT) -> Any:
  """``output`` if it is a tuple of ``arity``; otherwise an error naming the stage contract."""
  if isinstance(output, tuple) and len(output) == arity:
    return output
  if isinstance(output, tuple):
    got = f'a tuple of {len(output)}'
  elif hasattr(output, 'shape'):
    got = f'one array of shape {tuple(output.shape)}'
  else:
    got = type(output).__name__
  raise TypeError(f'{which} returned {got}; {contract}.')


def _scalar_loss(loss: Any, k: int) -> jax.Array:
  if jnp.ndim(loss) != 0:
    raise ValueError(
        f'exit {k}\'s loss has shape {tuple(jnp.shape(loss))}; it must be a scalar (the mean over '
        'the batch): a per-example loss [B] would make every gradient B times too large. '
        'Reduce it, e.g. loss.mean().')
  return loss


def _used(fn: Callable[[list[jax.Array]], Any], leaves: list[jax.Array]) -> list[int]:
  """Indices of the ``leaves`` that ``fn`` reads, from its jaxpr (trace only, nothing runs).

  Conservative: a leaf that reaches any equation or output counts as read, so
  a stage is never differentiated with respect to less than it uses.
  """
  jaxpr = jax.make_jaxpr(fn)(leaves).jaxpr
  read = {id(v) for eqn in jaxpr.eqns for v in eqn.invars}
  read |= {id(v) for v in jaxpr.outvars}
  return [i for i, v in enumerate(jaxpr.invars) if id(v) in read]


StageOnLeaves = Callable[[list[jax.Array], Any, Any], tuple[Any, jax.Array, Any]]


def staged_walk(stages: Sequence[StageOnLeaves], leaves: list[jax.Array], carry: Any,
                exit_loss: Callable[[int, jax.Array], jax.Array], state: Any = None, *,
                vectorize: bool = False) -> tuple[list[jax.Array], jax.Array, Any]:
  """The staged engine on a flat list of parameter leaves that any stage may read.

  ``stages[k](leaves, state, carry) -> (carry, logits_k, state)``: every stage
  sees every leaf and one state, threaded from stage to stage. Which leaves
  stage k reads is found from its jaxpr; it is differentiated with respect to
  those only, and a leaf read by several stages (a tied head, a shared
  embedding) gets, for each exit, the sum of its uses by the stages that exit
  reaches.

  Returns:
    ``(jac, losses, state)``: ``jac[i]`` is ``[K, *leaves[i].shape]`` (row j:
    d loss_j / d leaf i), ``losses`` ``[K]`` and the state after the last stage.
  """
  num_exits = len(stages)
  vjps, out_carries, losses, reads = [], [], [], []
  for k, stage in enumerate(stages):

    def run(values, c, idx, stage=stage, state=state, k=k):
      full = list(leaves)
      for i, value in zip(idx, values):
        full[i] = value
      new_carry, logits, new_state = stage_output(stage(full, state, c), f'stage {k}')
      return (new_carry, _scalar_loss(exit_loss(k, logits), k)), new_state

    def whole(full: list[jax.Array], c: Any = carry, run: Callable = run) -> Any:
      return run(full, c, range(len(full)))[0]

    idx = _used(whole, leaves)
    values = [leaves[i] for i in idx]
    if k == 0:  # the input needs no cotangent: differentiate the first stage's params only
      (carry, loss), vjp, state = jax.vjp(lambda v, c=carry, idx=idx: run(v, c, idx), values,
                                          has_aux=True)
    else:
      (carry, loss), vjp, state = jax.vjp(lambda v, c, idx=idx: run(v, c, idx), values, carry,
                                          has_aux=True)
    vjps.append(vjp)
    out_carries.append(carry)
    losses.append(loss)
    reads.append(idx)

  # Per leaf, the rows each stage gives it: stage k gives exits k..K-1.
  parts: list[list[jax.Array]] = [[] for _ in leaves]
  arriving: list[Any] = []  # per later exit: its cotangent on stage k's output carry
  for k in reversed(range(num_exits)):
    # Exit k enters here with d loss_k / d loss_k = 1 and nothing on the carry;
    # the later exits bring their carry cotangents and nothing on loss_k.
    one, zero = jnp.ones_like(losses[k]), jnp.zeros_like(losses[k])
    stack = [(jax.tree.map(jnp.zeros_like, out_carries[k]), one)]
    stack += [(ct, zero) for ct in arriving]
    if vectorize:
      batched = jax.vmap(vjps[k])(jax.tree.map(lambda *a: jnp.stack(a), *stack))
      value_cts = batched[0]
      arriving = ([jax.tree.map(lambda a, i=i: a[i], batched[1]) for i in range(len(stack))]
                  if k else [])
    else:
      outs = [vjps[k](ct) for ct in stack]
      value_cts = [jnp.stack(rows) for rows in zip(*[o[0] for o in outs])]
      arriving = [o[1] for o in outs] if k else []
    for i, rows in zip(reads[k], value_cts):
      parts[i].append(jnp.concatenate([jnp.zeros((k, *rows.shape[1:]), rows.dtype), rows]))
  jac = [functools.reduce(jnp.add, p) if p else
         jnp.zeros((num_exits, *jnp.shape(leaf)), jnp.result_type(leaf))
         for p, leaf in zip(parts, leaves)]
  return jac, jnp.stack(losses), state


def staged_jacobian(
    stages: Sequence[StageFn],
    params: Sequence[Any],
    carry: Any,
    exit_loss: Callable[[int, jax.Array], jax.Array],
    states: Optional[Sequence[Any]] = None,
    *,
    shared: Any = None,
    rng: Optional[jax.Array] = None,
    vectorize: bool = False,
) -> Gradients:
  """Per-exit gradients of any sequence of stages, stage by stage.

  Args:
    stages: K functions ``stage(params_k, state_k, carry) -> (carry,
      logits_k, state_k)``.
    params: K pytrees, stage k's differentiated parameters.
    carry: what the first stage reads (e.g. the input batch); it gets no
      cotangent.
    exit_loss: ``exit_loss(k, logits_k) -> scalar``, exit k's loss (the mean
      over the batch; a loss of any other shape is an error).
    states: K pytrees of non-differentiated state (default: ``None`` each).
    shared: parameters several stages use (a tied head, a shared embedding):
      every stage is then called with ``shared=shared`` as a keyword, and
      each exit's gradient on them sums their uses by every stage it reaches.
      Parameters repeated inside ``params`` are *not* recognised as one:
      declare them here.
    rng: a PRNG key; stage k is then called with
      ``rng=jax.random.fold_in(rng, k)`` (dropout and other randomness).
    vectorize: push the exits' cotangents through a stage's backward pass as
      one ``vmap`` instead of one backward call per exit (default). Both share
      the forward residuals; on CPU the per-exit calls measured faster.

  Returns:
    :class:`anytime_jax.Gradients` ``(grads, losses, aux)``: ``grads[k]`` has
    the structure of ``params[k]`` with every leaf ``[K, *leaf.shape]`` (row
    j: the gradient of exit j's loss; exactly zero for j < k); with
    ``shared``, ``grads`` is the pair ``(per-stage list, shared)``, the
    shared part shaped like ``shared`` with the same exit axis. ``losses`` is
    ``[K]``; ``aux`` the list of updated states.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> stage = lambda p, state, h: (jnp.tanh(h @ p), h @ p, state)  # (carry, logits, state)
  >>> w0, w1 = jnp.eye(3), 2 * jnp.eye(3)
  >>> x, y = jnp.ones((2, 3)), jnp.array([0, 2])
  >>> loss = lambda k, logits: aj.exit_cross_entropy(logits[None], y)[0]
  >>> grads, losses, _ = aj.staged_jacobian([stage, stage], [w0, w1], x, loss)
  >>> [g.shape for g in grads]  # stage j's parameters, [K, *shape]
  [(2, 3, 3), (2, 3, 3)]
  >>> bool(jnp.all(grads[1][0] == 0))  # exit 1 does not reach stage 2
  True

  A head both stages use, declared once:

  >>> tied = lambda p, state, h, shared: (jnp.tanh(h @ p), jnp.tanh(h @ p) @ shared, state)
  >>> (grads, head), _, _ = aj.staged_jacobian([tied, tied], [w0, w1], x, loss, shared=w1)
  >>> head.shape  # [K, 3, 3]: exit 2's row sums both stages' uses
  (2, 3, 3)
  """
  num_exits = len(stages)
  if len(params) != num_exits:
    raise ValueError(f'{num_exits} stages but {len(params)} parameter pytrees; give one per stage.')
  states = [None] * num_exits if states is None else list(states)
  if len(states) != num_exits:
    raise ValueError(f'{num_exits} stages but {len(states)} states; give one per stage (or None).')
  leaves, treedef = jax.tree.flatten((list(params), shared))

  def on_leaves(k: int, stage: StageFn) -> StageOnLeaves:
    def run(full, all_states, c):
      stage_params, shared_params = jax.tree.unflatten(treedef, full)
      keyword = {} if shared is None else {'shared': shared_params}
      if rng is not None:
        keyword['rng'] = jax.random.fold_in(rng, k)
      new_carry, logits, new_state = stage_output(
          stage(stage_params[k], all_states[k], c, **keyword), f'stage {k}')
      return new_carry, logits, [*all_states[:k], new_state, *all_states[k + 1:]]
    return run

  jac, losses, new_states = staged_walk([on_leaves(k, s) for k, s in enumerate(stages)], leaves,
                                        carry, exit_loss, states, vectorize=vectorize)
  stage_jac, shared_jac = jax.tree.unflatten(treedef, jac)
  return Gradients(stage_jac if shared is None else (stage_jac, shared_jac), losses, new_states)
