"""Flax NNX front end of the staged engine: NNX stages and NNX models with stages.

NNX is what Flax recommends for new code. Its modules reduce to the engine's
pure stages through ``nnx.split``/``nnx.merge``: stage k's ``nnx.Param`` s are
what is differentiated, everything else (BatchNorm statistics) its state.
Per-exit gradients come back as an ``nnx.State`` shaped like
``nnx.state(model, nnx.Param)`` with an exit axis in front of every leaf, which
``nnx.Optimizer(model, aj.osgd(...), wrt=nnx.Param).update(model, grads)``
takes as it is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional

import jax
from flax import nnx

from anytime_jax._src.losses import cross_entropy
from anytime_jax._src.jacobian import Gradients
from anytime_jax._src.staged import StageFn, stage_output, staged_walk


def _variables(node: Any) -> dict[int, tuple]:
  """Every Variable reachable from ``node``, by identity: ``{id: path}``."""
  return {id(value): path for path, value in nnx.iter_graph(node)
          if isinstance(value, nnx.Variable)}


def nnx_stages(modules: Sequence[nnx.Module],
               call: Callable[[nnx.Module, Any], tuple[Any, jax.Array]] = lambda m, c: m(c)
               ) -> tuple[list[StageFn], list[Any], list[Any]]:
  """Separate NNX stage modules as engine stages: ``(stages, params, states)`` for :func:`anytime_jax.staged_jacobian`.

  For stage modules that share no Variable. A model whose stages share
  parameters (a tied head, a shared embedding) goes whole through
  :func:`nnx_staged_exit_jacobian`, which sums every exit's gradient over all
  uses; here that is refused with an error, since split stages would each
  train their own copy.

  Args:
    modules: stage k maps a carry to ``(carry, logits_k)`` through ``call``.
    call: ``call(module, carry) -> (carry, logits)``; default ``module(carry)``.

  Returns:
    Stage functions, each stage's ``nnx.Param`` state (differentiated) and the
    rest of its state (returned updated by the engine: write it back with
    ``nnx.update(module, state)``). Randomness (``nnx.Dropout``) comes from
    the ``nnx.Rngs`` inside that state, so the engine's ``rng=`` is ignored.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> from flax import nnx
  >>> blocks = [nnx.Linear(3, 3, rngs=nnx.Rngs(0)), nnx.Linear(3, 3, rngs=nnx.Rngs(1))]
  >>> call = lambda m, h: (jnp.tanh(m(h)), m(h))  # (carry, logits)
  >>> stages, params, states = aj.nnx_stages(blocks, call)
  >>> loss = lambda k, logits: aj.exit_cross_entropy(logits[None], jnp.array([0, 2]))[0]
  >>> grads, losses, _ = aj.staged_jacobian(stages, params, jnp.ones((2, 3)), loss, states)
  >>> grads[1]['kernel'].shape  # [K, 3, 3]
  (2, 3, 3)
  """
  seen: dict[int, int] = {}
  for k, module in enumerate(modules):
    for variable, path in _variables(module).items():
      if seen.setdefault(variable, k) != k:
        raise ValueError(
            f'stage modules {seen[variable]} and {k} share a Variable (at {path} of stage {k}); '
            'split stages would train one copy each. Hold the stages in one nnx.Module (e.g. '
            'an nnx.List attribute) and use aj.nnx_staged_exit_jacobian.')
  stages, params, states = [], [], []
  for module in modules:
    graphdef, stage_params, rest = nnx.split(module, nnx.Param, ...)  # type: ignore[misc]

    def stage(p, state, carry, rng=None, graphdef=graphdef):
      del rng  # NNX modules draw randomness from the nnx.Rngs in their own state
      # Rebuilt inside the trace: a Variable made outside it cannot be mutated (RNG counts).
      merged = nnx.merge(graphdef, p, jax.tree.map(lambda a: a, state))
      carry, logits = stage_call(call(merged, carry), 'the stage')
      return carry, logits, nnx.state(merged, nnx.Not(nnx.Param))

    stages.append(stage)
    params.append(stage_params)
    states.append(rest)
  return stages, params, states


NNX_CONTRACT = 'an NNX stage maps a carry to (carry, logits [B, C])'


def stage_call(output: Any, which: str) -> tuple[Any, jax.Array]:
  """``output`` if it is ``(carry, logits)``; otherwise an error naming the NNX stage contract."""
  return stage_output(output, which, 2, NNX_CONTRACT)


def stage_modules(model: nnx.Module, stages: str = 'stages') -> Sequence[nnx.Module]:
  """``getattr(model, stages)``, checked: the model's K stage modules in exit order."""
  modules = getattr(model, stages, None)
  if modules is None or not hasattr(modules, '__len__') or not len(modules):
    raise ValueError(
        f'{type(model).__name__} has no non-empty sequence attribute {stages!r}; an NNX anytime '
        'model holds its stages in order (e.g. self.stages = nnx.List([...])), each mapping a '
        "carry to (carry, logits); name the attribute with stages='...'.")
  return modules


def nnx_model_stages(model: nnx.Module, *, train: Optional[bool] = None, stages: str = 'stages'):
  """Any NNX model with stages as functions of its parameter leaves, for the staged engine.

  Returns ``(stage_fns, leaves, rest, rebuild)``: ``stage_fns[k](leaves,
  rest, carry) -> (carry, logits, rest)`` merges the model from the leaves of
  ``nnx.state(model, nnx.Param)`` and the leaves ``rest`` of everything else
  (BatchNorm statistics, RNG counts), in train or eval mode (``None``: the
  model's own), and runs stage k; ``rebuild(leaves, rest)`` gives back the
  ``(params, rest)`` states.
  """
  num_exits = len(stage_modules(model, stages))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]
  leaves, params_def = jax.tree.flatten(params)
  rest_leaves, rest_def = jax.tree.flatten(rest)

  def stage_fn(k):
    def run(full, rest_now, carry):
      # Rebuilt inside the trace: a Variable made outside it cannot be mutated (RNG counts).
      merged = nnx.merge(graphdef, jax.tree.unflatten(params_def, full),
                         jax.tree.unflatten(rest_def, rest_now))
      if train:
        merged.train()
      elif train is not None:
        merged.eval()
      carry, logits = stage_call(getattr(merged, stages)[k](carry), f'stage {k}')
      return carry, logits, jax.tree.leaves(nnx.split(merged, nnx.Param, ...)[2])
    return run

  def rebuild(new_leaves, new_rest):
    return jax.tree.unflatten(params_def, new_leaves), jax.tree.unflatten(rest_def, new_rest)

  return [stage_fn(k) for k in range(num_exits)], leaves, rest_leaves, rebuild


def nnx_staged_exit_jacobian(
    model: nnx.Module,
    x: Any,
    y: Any,
    *,
    train: Optional[bool] = True,
    loss_fn: Optional[Callable[[jax.Array, Any], jax.Array]] = None,
    stages: str = 'stages',
    vectorize: bool = False,
) -> Gradients:
  """Per-exit gradients of any NNX anytime model by the staged engine.

  The model holds its stages in order in the attribute ``stages`` (an
  ``nnx.List`` of modules; Flax 0.12 refuses a plain list there): stage k maps a carry to
  ``(carry, logits_k [B, C])``, the first stage reads ``x``. Parameters the
  stages share (a tied head, a shared embedding) are found from the graph and
  each exit's gradient on them sums all their uses by the stages it reaches,
  as :func:`anytime_jax.exit_jacobian` on the whole model gives it.

  Randomness (``nnx.Dropout``) comes from the model's ``nnx.Rngs``; their
  counts and BatchNorm statistics are updated in the model, once per call, in
  place as NNX does (under ``nnx.jit`` too). In eval mode the gradients equal
  :func:`anytime_jax.exit_jacobian`'s on the model.

  Args:
    model: an ``nnx.Module`` with stages (:func:`create_nnx`'s, or a user's).
    x: what the first stage reads (e.g. images ``[B, H, W, C]``).
    y: the labels, passed to ``loss_fn``.
    train: run the stages in training mode (``model.train()``: dropout on,
      batch statistics), eval mode (``False``: ``model.eval()``), or the
      model's own mode (``None``). The mode is set on a copy: the model's own
      attributes are left as they were.
    loss_fn: ``loss_fn(logits_k [B, C], y) -> scalar``, one exit's loss;
      default mean softmax cross-entropy with integer labels.
    stages: the name of the attribute holding the stages.
    vectorize: see :func:`anytime_jax.staged_jacobian`.

  Returns:
    :class:`anytime_jax.Gradients` ``(grads, losses [K], aux)``: ``grads`` is
    shaped like ``nnx.state(model, nnx.Param)`` (each shared Variable once)
    with every leaf ``[K, *leaf.shape]``, ready for
    ``nnx.Optimizer(model, tx, wrt=nnx.Param).update(model, grads)``;
    ``aux`` is the model's updated non-parameter state (already written
    back).

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> from flax import nnx
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> model = aj.create_nnx('branched', num_classes=3, num_exits=2, width=2, num_levels=1,
  ...                      example=x, rngs=nnx.Rngs(0))
  >>> optimizer = nnx.Optimizer(model, aj.osgd(0.1), wrt=nnx.Param)
  >>> grads, losses, _ = nnx.jit(aj.nnx_staged_exit_jacobian)(model, x, y)  # [K, *shape]
  >>> _ = optimizer.update(model, grads)  # OSGD, then SGD with momentum
  >>> losses.shape
  (2,)
  """
  loss_fn = cross_entropy if loss_fn is None else loss_fn
  stage_fns, leaves, rest, rebuild = nnx_model_stages(model, train=train, stages=stages)
  jac, losses, new_rest = staged_walk(stage_fns, leaves, x, lambda k, logits: loss_fn(logits, y),
                                      rest, vectorize=vectorize)
  grads, new_state = rebuild(jac, new_rest)
  nnx.update(model, new_state)
  return Gradients(grads, losses, new_state)
