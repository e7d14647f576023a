"""Anytime inference: run exits one at a time, exit early, count FLOPs, evaluate."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

import flax.linen as nn
from flax import nnx

from anytime_jax._src import nnx as nnx_lib
from anytime_jax._src.linen import first_carry, linen_num_stages
from anytime_jax._src.staged import stage_output

Model = Any
"""What the inference functions run: one of our linen networks (or any linen
module holding its stages in ``stages``) with its ``variables``; any NNX model holding its stages in ``model.stages``; or a
sequence of plain stages ``stage(params_k, state_k, carry) -> (carry,
logits_k, state_k)`` with their ``params`` (and keyword ``states``,
``shared`` as for :func:`anytime_jax.staged_jacobian`)."""


class _Program(NamedTuple):
  key: tuple  # hashable: names the stage functions (for jit and the FLOPs cache)
  variables: list[Any]  # per stage, the arrays it reads
  x: Any  # what the first stage reads, before _first_carry


def _program(model: Model, args: tuple, states: Any, shared: Any) -> _Program:
  """The stage sequence behind any front end (see :data:`Model`)."""
  if isinstance(model, nnx.Module):
    if len(args) != 1:
      raise TypeError(f'an NNX model holds its variables: call with (model, x), got {len(args)} '
                      'arguments after the model.')
    num_exits = len(nnx_lib.stage_modules(model))
    graphdef, state = nnx.split(model)
    return _Program(('nnx', graphdef, num_exits), [state] * num_exits, args[0])
  if len(args) != 2:
    raise TypeError(f'call with (model, variables, x) for a linen network or (stages, params, x) '
                    f'for plain stages, got {len(args)} arguments after the model.')
  variables, x = args
  if isinstance(model, nn.Module):
    return _Program(('linen', model), [variables] * linen_num_stages(model, variables), x)
  if not isinstance(model, Sequence) or not all(callable(s) for s in model):
    raise TypeError(f'cannot run {type(model).__name__} as an anytime network: pass a linen '
                    'network and its variables, an NNX model with stages, or a sequence of '
                    'stage functions and their params.')
  stages = tuple(model)
  states = [None] * len(stages) if states is None else list(states)
  if not len(variables) == len(states) == len(stages):
    raise ValueError(f'{len(stages)} stages, {len(variables)} parameter pytrees and '
                     f'{len(states)} states: give one of each per stage.')
  return _Program(('plain', stages, shared is not None),
                  [(p, s, shared) for p, s in zip(variables, states)], x)


def _logits(logits: Any, k: int) -> jax.Array:
  if jnp.ndim(logits) != 2:
    raise ValueError(f'stage {k} returned logits of shape {jnp.shape(logits)}; anytime inference '
                     'expects one exit\'s logits [B, C].')
  return logits


@functools.lru_cache(maxsize=256)
def _stage(key: tuple, k: int):
  """Stage k of the program named ``key``: jitted ``fn(variables_k, carry) -> (carry, logits)``."""
  kind = key[0]
  if kind == 'linen':
    def fn(v, carry):
      carry, logits = key[1].apply(v, carry, method=lambda m, c: m.stages[k](c, train=False))
      return carry, _logits(logits, k)
  elif kind == 'nnx':
    def fn(v, carry):
      model = nnx.merge(key[1], v)
      model.eval()
      carry, logits = nnx_lib.stage_call(nnx_lib.stage_modules(model)[k](carry),
                                             f'stage {k}')
      return carry, _logits(logits, k)
  else:
    def fn(v, carry):
      params, state, shared = v
      keyword = {} if not key[2] else {'shared': shared}
      carry, logits, _ = stage_output(key[1][k](params, state, carry, **keyword), f'stage {k}')
      return carry, _logits(logits, k)
  return jax.jit(fn)


def _first_carry(key: tuple, x: Any) -> Any:
  return first_carry(key[1], x) if key[0] == 'linen' else x


def iterate_exits(model: Model, *args: Any, states: Any = None, shared: Any = None
                  ) -> Iterator[jax.Array]:
  """Yields exit 1..K logits ``[B, C]`` in order, in eval mode.

  Each stage runs once, when its exit is asked for: stop iterating and the
  later stages never run; no earlier result is ever recomputed.

  Args:
    model: a linen network, an NNX model or plain stages (:data:`Model`).
    *args: ``(variables, x)`` for a linen network, ``(x,)`` for an NNX model,
      ``(params, x)`` for plain stages.
    states, shared: plain stages' states and shared parameters.

  Example:

  >>> import jax, anytime_jax as aj
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> variables = aj.models.init_variables(network, jax.random.key(0), x)
  >>> [logits.shape for logits in aj.iterate_exits(network, variables, x)]  # [B, C] each
  [(4, 3), (4, 3)]

  Plain stages, and an NNX model, the same way:

  >>> import jax.numpy as jnp
  >>> stage = lambda p, state, h: (jnp.tanh(h @ p), h @ p, state)  # (carry, logits, state)
  >>> [l.shape for l in aj.iterate_exits([stage, stage], [jnp.eye(3)] * 2, jnp.ones((2, 3)))]
  [(2, 3), (2, 3)]
  """
  program = _program(model, args, states, shared)
  carry = _first_carry(program.key, program.x)
  for k, v in enumerate(program.variables):
    carry, logits = _stage(program.key, k)(v, carry)
    yield logits


def _spec(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), tree)


@functools.lru_cache(maxsize=64)
def _exit_flops(key: tuple, variables_spec: Any, x_spec: Any) -> tuple[float, ...]:
  variables = jax.tree.unflatten(*variables_spec)
  carry = jax.eval_shape(functools.partial(_first_carry, key), jax.tree.unflatten(*x_spec))
  total, cumulative = 0.0, []
  for k, v in enumerate(variables):
    fn = _stage(key, k)
    analysis = fn.lower(v, carry).cost_analysis()
    if not analysis or 'flops' not in analysis:
      raise RuntimeError('XLA gave no cost analysis for this backend; exit_flops needs one.')
    total += float(analysis['flops'])
    cumulative.append(total)
    carry = jax.eval_shape(fn, v, carry)[0]
  return tuple(cumulative)


def exit_flops(model: Model, *args: Any, states: Any = None, shared: Any = None) -> list[float]:
  """Cumulative FLOPs to produce each exit for one example, from XLA's cost analysis.

  A multiply-add counts as 2 FLOPs (XLA's convention); convolutions count only
  the taps inside the image. Works on shapes only, also inside ``jit``.

  Args:
    model: a linen network, an NNX model or plain stages (:data:`Model`).
    *args: as for :func:`iterate_exits`; only shapes are used, and of the
      input ``x`` (``[B, ...]``, or a pytree of such) one example's.
    states, shared: plain stages' states and shared parameters.

  Returns:
    K floats: exit k's FLOPs include every stage up to k.

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> variables = aj.models.init_variables(network, jax.random.key(0), x)
  >>> flops = aj.exit_flops(network, variables, x)  # cumulative, per example
  >>> len(flops), flops[0] < flops[1]
  (2, True)
  """
  program = _program(model, args, states, shared)
  leaves, treedef = jax.tree.flatten(_spec(program.variables))
  one = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1, *jnp.shape(a)[1:]), jnp.result_type(a)),
                     program.x)
  x_leaves, x_def = jax.tree.flatten(one)
  return list(_exit_flops(program.key, (treedef, tuple(leaves)), (x_def, tuple(x_leaves))))


SCORES = ('softmax', 'margin')


def exit_scores(logits: jax.Array, score: str = 'softmax') -> jax.Array:
  """Each exit's confidence in its prediction: ``[K, N, C]`` logits to ``[K, N]`` scores.

  Args:
    logits: ``[K, N, C]``.
    score: ``'softmax'``: the largest softmax probability, in [1/C, 1]; it
      saturates: in float32 it is exactly 1.0 once the top logit leads the
      next by about 17, as it does for most examples of a trained network.
      ``'margin'``: the top logit minus the second, which never saturates;
      use it to calibrate thresholds on trained networks.

  Returns:
    ``[K, N]`` float32 scores; larger means more confident.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> logits = jnp.array([[[2.0, 0.0], [0.0, 0.5]], [[3.0, 0.0], [0.0, 4.0]]])  # [K=2, N=2, C=2]
  >>> aj.exit_scores(logits, 'margin')  # top-1 minus top-2 logit, [K, N]
  Array([[2. , 0.5],
         [3. , 4. ]], dtype=float32)
  """
  if score not in SCORES:
    raise ValueError(f'score must be one of {SCORES}, got {score!r}.')
  logits = jnp.asarray(logits).astype(jnp.float32)
  if score == 'softmax':
    return jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)
  top2 = jax.lax.top_k(logits, 2)[0]
  return top2[..., 0] - top2[..., 1]


def first_confident_exit(logits: jax.Array, thresholds: ArrayLike,
                         score: str = 'softmax') -> jax.Array:
  """Index of the first exit whose score (:func:`exit_scores`) reaches its threshold.

  Args:
    logits: ``[K, N, C]``.
    thresholds: a scalar or ``[K]``; the last exit always accepts.
    score: ``'softmax'`` (default) or ``'margin'``.

  Returns:
    ``[N]`` int32 exit indices.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> logits = jnp.array([[[2.0, 0.0], [0.0, 0.5]], [[3.0, 0.0], [0.0, 4.0]]])  # [K=2, N=2, C=2]
  >>> aj.first_confident_exit(logits, jnp.array([1.0, 1.0]), score='margin')  # [N]
  Array([0, 1], dtype=int32)
  """
  confidence = exit_scores(logits, score)
  thresholds = jnp.broadcast_to(jnp.asarray(thresholds, jnp.float32), logits.shape[:1])
  accept = (confidence >= thresholds[:, None]).at[-1].set(True)
  return jnp.argmax(accept, axis=0).astype(jnp.int32)


class EarlyExit(NamedTuple):
  """Per-sample result of :func:`early_exit`: all ``[B]``.

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> variables = aj.models.init_variables(network, jax.random.key(0), x)
  >>> aj.early_exit(network, variables, x, threshold=2.0)._fields  # softmax never reaches 2
  ('predictions', 'exits', 'flops')
  """
  predictions: jax.Array
  exits: jax.Array
  flops: jax.Array


def early_exit(model: Model, *args: Any, threshold: float | jax.Array, score: str = 'softmax',
               states: Any = None, shared: Any = None) -> EarlyExit:
  """Confidence-based early exit for a batch; jittable.

  A sample stops at the first exit whose score (:func:`exit_scores`: max
  softmax probability by default, or the logit margin) reaches ``threshold``
  (a scalar or one per exit), or at the last exit. In a batch every stage runs on the
  device; the returned FLOPs are what each sample would cost alone. To save
  the compute for real, feed one sample (or a batch) to :func:`iterate_exits`
  and stop.

  Args:
    model: a linen network, an NNX model or plain stages (:data:`Model`).
    *args: as for :func:`iterate_exits`.
    states, shared: plain stages' states and shared parameters.
    threshold: a scalar or ``[K]``, keyword only.
    score: ``'softmax'`` or ``'margin'`` (:func:`exit_scores`).

  Returns:
    :class:`EarlyExit` with predicted classes, the 0-based exit each sample
    used, and its cumulative FLOPs.

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> network = aj.models.create('branched', num_classes=3, num_exits=2, width=2, num_levels=1)
  >>> x = jax.random.normal(jax.random.key(1), (4, 4, 4, 1))  # [B, H, W, C]
  >>> y = jnp.array([0, 1, 2, 0])  # [B]
  >>> variables = aj.models.init_variables(network, jax.random.key(0), x)
  >>> result = aj.early_exit(network, variables, x, threshold=0.0)  # every sample leaves at once
  >>> result.exits
  Array([0, 0, 0, 0], dtype=int32)
  >>> bool(jnp.all(result.flops == aj.exit_flops(network, variables, x)[0]))
  True
  """
  logits = jnp.stack(list(iterate_exits(model, *args, states=states, shared=shared)))
  exits = first_confident_exit(logits, threshold, score)
  predictions = jnp.take_along_axis(jnp.argmax(logits, -1), exits[None], axis=0)[0]
  flops = jnp.asarray(exit_flops(model, *args, states=states, shared=shared), jnp.float32)[exits]
  return EarlyExit(predictions, exits, flops)


def exit_accuracy(logits: jax.Array, labels: jax.Array) -> np.ndarray:
  """Top-1 accuracy of each exit: logits ``[K, N, C]``, labels ``[N]`` -> ``[K]``.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> logits = jnp.array([[[2.0, 0.0], [0.0, 0.5]], [[3.0, 0.0], [0.0, 4.0]]])  # [K=2, N=2, C=2]
  >>> aj.exit_accuracy(logits, jnp.array([0, 0]))  # [K]
  array([0.5, 0.5], dtype=float32)
  """
  return np.asarray(jnp.mean(jnp.argmax(logits, -1) == labels[None], axis=-1))


def calibrate_thresholds(scores: np.ndarray, fractions: np.ndarray) -> np.ndarray:
  """Per-exit thresholds under which ``fractions[k]`` of the samples leave at exit k.

  Exit k takes the ``round(fractions[k] * N)`` highest-scoring samples of
  those still remaining; its threshold lies halfway between the last one
  taken and the next, so that the fractions are realised exactly on these
  scores unless scores tie at the boundary (with a saturating score they do:
  calibrate on ``'margin'``).

  Args:
    scores: ``[K, N]`` (:func:`exit_scores`).
    fractions: ``[K]`` target fractions (the last exit takes the rest).

  Returns:
    ``[K]`` thresholds for :func:`first_confident_exit` (the last one ``-inf``).

  Example:

  >>> import numpy as np, anytime_jax as aj
  >>> scores = np.array([[0.9, 0.2, 0.8, 0.1], [1.0, 1.0, 1.0, 1.0]])  # [K=2, N=4]
  >>> aj.calibrate_thresholds(scores, np.array([0.5, 0.5]))  # half leave at exit 1
  array([ 0.5, -inf])
  """
  num_exits, n = scores.shape
  remaining = np.ones(n, bool)
  thresholds = np.full(num_exits, -np.inf)
  for k in range(num_exits - 1):
    pool = np.sort(scores[k][remaining])[::-1]
    count = min(int(round(fractions[k] * n)), pool.size)
    if count <= 0:
      thresholds[k] = np.inf
      continue
    below = pool[count] if count < pool.size else -np.inf
    thresholds[k] = pool[count - 1] if below == -np.inf else (pool[count - 1] + below) / 2
    if thresholds[k] == below:  # adjacent floats: no midpoint between them
      thresholds[k] = pool[count - 1]
    remaining &= ~(scores[k] >= thresholds[k])
  return thresholds


def budgeted_batch_curve(val_logits, val_labels, test_logits, test_labels,
                         flops: Sequence[float], num_points: int = 20,
                         score: str = 'margin') -> list[dict]:
  """Accuracy vs average FLOPs under a budget, as in MSDNet (Huang et al. 2018).

  For each point, the fraction of samples leaving at exit k follows a
  geometric law ``p_k ~ q**k`` (q swept from favouring exit 1 to favouring
  exit K); per-exit thresholds that realise it are calibrated on the
  validation split and applied to the test split.

  Args:
    val_logits, test_logits: ``[K, N, C]`` exit logits.
    val_labels, test_labels: ``[N]``.
    flops: cumulative FLOPs per exit (:func:`exit_flops`).
    num_points: number of budgets.
    score: what the thresholds apply to (:func:`exit_scores`); the default
      logit margin does not saturate on trained networks.

  Returns:
    Points sorted by FLOPs: dicts with ``flops`` (average per test sample),
    ``accuracy``, ``q``, ``target_fractions`` and ``validation_fractions``
    (the exit fractions realised on validation), and ``thresholds``.

  Example:

  >>> import numpy as np, anytime_jax as aj
  >>> rng = np.random.default_rng(0)
  >>> logits = rng.normal(size=(2, 100, 3)) * np.array([1.0, 3.0])[:, None, None]  # [K, N, C]
  >>> labels = logits[1].argmax(-1)  # exit 2 always right
  >>> curve = aj.budgeted_batch_curve(logits, labels, logits, labels, flops=[1.0, 3.0],
  ...                               num_points=3)  # validation = test, for brevity
  >>> [round(p['flops'], 2) for p in curve]  # average FLOPs per sample, rising
  [1.1, 2.0, 2.9]
  >>> [round(p['accuracy'], 2) for p in curve]
  [0.34, 0.61, 0.95]
  """
  num_exits = len(flops)
  scores_val = np.asarray(exit_scores(val_logits, score))
  if scores_val.shape[0] != num_exits:
    raise ValueError(f'{scores_val.shape[0]} exits of logits but {num_exits} FLOPs entries.')
  exit_cost = np.asarray(flops, np.float64)
  test_pred = np.asarray(jnp.argmax(jnp.asarray(test_logits), -1))
  points = []
  for q in np.geomspace(0.05, 20.0, num_points):
    fractions = q ** np.arange(num_exits)
    fractions /= fractions.sum()
    thresholds = calibrate_thresholds(scores_val, fractions)
    val_exits = np.asarray(first_confident_exit(jnp.asarray(val_logits), thresholds, score))
    exits = np.asarray(first_confident_exit(jnp.asarray(test_logits), thresholds, score))
    correct = test_pred[exits, np.arange(exits.size)] == np.asarray(test_labels)
    points.append({'q': float(q), 'flops': float(exit_cost[exits].mean()),
                   'accuracy': float(correct.mean()), 'target_fractions': fractions.tolist(),
                   'validation_fractions': (np.bincount(val_exits, minlength=num_exits)
                                            / max(val_exits.size, 1)).tolist(),
                   'thresholds': thresholds.tolist()})
  return sorted(points, key=lambda p: p['flops'])
