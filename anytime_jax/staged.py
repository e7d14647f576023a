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
:func:`staged_jacobian` takes such stages; :func:`linen_stages` turns one of our
networks into them, and ``anytime_jax.nnx_stages`` does the same for Flax NNX
modules.

Parameters several stages use (a tied head, a shared embedding) must get, for
each exit, the sum of their uses by the stages it reaches. Underneath every
front end, :func:`staged_walk` gives each stage all parameter leaves, reads
from the stage's jaxpr which of them it uses and differentiates it with
respect to those only, so such a parameter is one leaf with every use summed:
whole linen modules (:func:`staged_exit_jacobian`) and NNX models
(``anytime_jax.nnx_staged_exit_jacobian``) need nothing declared, plain stages
declare them with ``shared=``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import Any, Optional

import flax.errors
import flax.linen as nn
import jax
import jax.numpy as jnp

from anytime_jax.jacobian import Gradients
from anytime_jax.losses import cross_entropy
from anytime_jax.models.network import (AnytimeNetwork, apply_stage, initial_carry,
                                        stage_variables)

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


@contextlib.contextmanager
def dropout_key_named(fix: str):
  """Re-raises flax's missing-PRNG error with the argument that supplies the key."""
  try:
    yield
  except flax.errors.InvalidRngError as e:
    raise ValueError(f'the network draws randomness (dropout) but got no key: {fix}. '
                     f'({e})') from e


def first_carry(network: nn.Module, x: Any) -> Any:
  """What stage 0 of a linen network reads: our networks' carry dict, a user's ``x`` itself."""
  return initial_carry(x) if isinstance(network, AnytimeNetwork) else x


def linen_num_stages(network: nn.Module, variables: Any) -> int:
  """How many stages a linen network holds in ``stages`` (a field, or defined in ``setup``)."""
  stages = getattr(network, 'stages', None)
  if stages is None and variables:
    stages = getattr(network.bind(variables), 'stages', None)
  if stages is None or not len(stages):
    raise ValueError(f'{type(network).__name__} has no stages: a linen anytime network holds its '
                     'stages in order in a `stages` attribute, each called stage(carry, '
                     'train=...) -> (carry, logits).')
  return len(stages)


def linen_model_stages(network: nn.Module, variables: Any, *, train: bool,
                       rng: Optional[jax.Array] = None):
  """Any linen module with stages as functions of its parameter leaves, for the staged engine.

  Stage k is ``network.stages[k](carry, train=train) -> (carry, logits)``,
  run through ``network.apply`` with all of ``variables``, so a submodule
  several stages call (a head defined in ``setup`` and handed to each stage)
  is one parameter. Returns ``(stage_fns, leaves, state, rebuild)`` as
  ``anytime_jax.nnx_support.nnx_model_stages`` does: ``state`` holds the
  other collections (BatchNorm statistics), threaded through the stages and
  updated in train mode; with ``rng`` stage k draws dropout from
  ``{'dropout': fold_in(rng, k)}``.
  """
  if 'params' not in variables:
    raise ValueError("variables lack 'params'; pass the variables returned by network.init.")
  num_stages = linen_num_stages(network, variables)
  leaves, params_def = jax.tree.flatten(variables['params'])
  state = {c: t for c, t in variables.items() if c != 'params'}

  def stage_fn(k: int) -> StageOnLeaves:
    def run(full, state_now, carry):
      v = {'params': jax.tree.unflatten(params_def, full), **state_now}
      rngs = None if rng is None else {'dropout': jax.random.fold_in(rng, k)}

      def method(module, c):
        return stage_output(module.stages[k](c, train=train), f'stage {k}', 2,
                            'a linen stage maps a carry to (carry, logits [B, C])')

      with dropout_key_named('pass rng=key (in a training step: dropout_key=)'):
        if train and state_now:
          (carry, logits), updates = network.apply(v, carry, method=method, rngs=rngs,
                                                   mutable=list(state_now))
          return carry, logits, {**state_now, **updates}
        carry, logits = network.apply(v, carry, method=method, rngs=rngs)
        return carry, logits, state_now
    return run

  def rebuild(jac: list[jax.Array]) -> Any:
    return jax.tree.unflatten(params_def, jac)

  return [stage_fn(k) for k in range(num_stages)], leaves, state, rebuild


def staged_exit_jacobian(
    network: nn.Module,
    variables: Any,
    x: Any,
    y: Any,
    *,
    train: bool = True,
    loss_fn: Optional[Callable[[jax.Array, Any], jax.Array]] = None,
    rng: Optional[jax.Array] = None,
    vectorize: bool = False,
) -> Gradients:
  """Per-exit gradients of a linen anytime network by the staged engine.

  Our networks (:func:`anytime_jax.models.create`) and any linen module that
  holds its stages in order in ``stages`` (each ``stage(carry, train=...) ->
  (carry, logits [B, C])``, the first reading ``x``). Parameters several
  stages use (a submodule defined in ``setup`` and called by each) are one
  parameter, and each exit's gradient on them sums all their uses, as
  :func:`anytime_jax.exit_jacobian` of the whole model gives it.

  Args:
    network: the linen module.
    variables: its variables (``params`` and, for BatchNorm, ``batch_stats``).
    x: what the first stage reads (our networks: images ``[B, H, W, C]``).
    y: labels ``[B]`` (anything ``loss_fn`` accepts).
    train: training mode: BatchNorm normalizes with batch statistics and the
      updated statistics are returned (once per step, as in ordinary training).
    loss_fn: ``loss_fn(logits [B, C], y) -> scalar``, the loss of one exit;
      default mean softmax cross-entropy with integer labels.
    rng: a PRNG key for dropout: stage k gets ``{'dropout': fold_in(rng, k)}``.
    vectorize: see :func:`staged_jacobian`.

  Returns:
    :class:`anytime_jax.Gradients` ``(grads, losses, aux)``: ``grads`` has the
    structure of ``variables['params']`` with every leaf ``[K, *leaf.shape]``
    (row k: the gradient of exit k's loss; exactly zero for parameters only
    later stages use); ``losses`` is ``[K]``; ``aux`` the variables' other
    collections (``{'batch_stats': ...}`` for BatchNorm), updated in train mode.

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> variables = aj.models.init_variables(network, jax.random.key(0), x)
  >>> grads, losses, aux = aj.staged_exit_jacobian(network, variables, x, y)
  >>> losses.shape  # [K]
  (2,)
  >>> jax.tree.leaves(grads['stages_0'])[0].shape[0]  # every leaf [K, *param.shape]
  2
  >>> sorted(aux)  # BatchNorm statistics updated by the train-mode pass
  ['batch_stats']
  """
  loss_fn = cross_entropy if loss_fn is None else loss_fn
  stage_fns, leaves, state, rebuild = linen_model_stages(network, variables, train=train, rng=rng)
  jac, losses, new_state = staged_walk(stage_fns, leaves, first_carry(network, x),
                                       lambda k, logits: loss_fn(logits, y), state,
                                       vectorize=vectorize)
  return Gradients(rebuild(jac), losses, new_state)
