"""Loss weightings: exit weights from the exits' losses alone, on the combination core.

AdaLoss, uncertainty weighting, DWA and FAMO weight exit k's gradient by a number that
depends on the losses (and a state), never on the gradients' geometry. They
run as the other combinations do (per-exit gradients in, ``losses=`` from
``tx.update(jac, state, params, losses=losses)``, ``axis_name`` averaging the
losses too), so they chain with the same optimizers and trainer. Their weights
are the same for every group of leaves, so they take no ``granularity``. Since
the weights do not depend on the gradients, the same step is the ordinary
gradient of ``sum_k w_k L_k`` with the weights held constant; this form takes
per-exit gradients so that it composes with everything else here
(accumulation, diagnostics, amortized refreshes).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from anytime_jax._src import deprecation
from anytime_jax._src import gram as gram_lib
from anytime_jax._src.combination import gram_weighting
from anytime_jax._src.gram import Granularity
from anytime_jax._src.registry import register

LossWeighting = Callable[[jax.Array, Any], tuple[jax.Array, Any]]
"""``weighting(losses [K], state) -> (weights [K], state)``."""


def _checked_losses(name: str, num_exits: int, losses: Optional[jax.Array],
                    axis_name: Optional[Hashable]) -> jax.Array:
  if losses is None or jnp.shape(losses) != (num_exits,):
    raise ValueError(f'{name}(num_exits={num_exits}) needs the [{num_exits}] per-exit losses: '
                     'call tx.update(jac, state, params, losses=losses); got '
                     f'{None if losses is None else jnp.shape(losses)}.')
  return gram_lib.average_over(jnp.asarray(losses, jnp.float32), axis_name)


def loss_weighting(name: str, weighting: LossWeighting, init: Callable[[], Any], *,
                   num_exits: int, granularity: Optional[Granularity],
                   axis_name: Optional[Hashable], diagnostics: bool
                   ) -> optax.GradientTransformationExtraArgs:
  """A combination whose weights come from the ``[K]`` losses: ``weighting(losses, state)``.

  ``init()`` makes the weighting's state with new arrays on every call and no
  array in two fields: a training step that donates its state (``jax.jit(...,
  donate_argnums=...)``) refuses one buffer passed twice, and would delete
  one that another state still holds.
  """
  if not isinstance(num_exits, int) or num_exits < 1:
    raise ValueError(f'{name}(num_exits=...) must be a positive integer, got {num_exits!r}.')
  deprecation.ignored_granularity(name, granularity)

  def by_losses(grams, state, losses=None, **_):
    weights, state = weighting(_checked_losses(name, num_exits, losses, axis_name), state)
    return jnp.broadcast_to(weights, grams.shape[:2]), state

  return gram_weighting(by_losses, granularity='exits', axis_name=axis_name,
                        init_state=lambda groups: init(), diagnostics=diagnostics,
                        num_exits=num_exits)


class AdaLossState(NamedTuple):
  """State of :func:`adaloss`.

  Attributes:
    average: ``[K]`` running average of each exit's loss.
    steps: steps seen.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]
  >>> tx = aj.adaloss(num_exits=2)
  >>> _, state = tx.update(jac, tx.init(None), losses=jnp.array([2.0, 0.5]))
  >>> state
  AdaLossState(average=Array([2. , 0.5], dtype=float32), steps=Array(1, dtype=int32))
  """
  average: jax.Array
  steps: jax.Array


@register(family='loss_weighting', needs_num_exits=True, reads_losses=True, granular=False)
def adaloss(*, num_exits: int, decay: float = 0.9, eps: float = 1e-8,
            granularity: Optional[Granularity] = None, axis_name: Optional[Hashable] = None,
            diagnostics: bool = False) -> optax.GradientTransformationExtraArgs:
  """AdaLoss: exit weights inversely proportional to each exit's running-average loss.

  Exit k's gradient is weighted in inverse proportion to its running-average
  loss, so that every exit's relative improvement counts alike; the weights are
  normalized to sum to K (the summed loss's scale). Needs the per-exit losses:
  ``tx.update(jac, state, params, losses=losses)`` (``[K]``); the average uses
  the losses up to the previous step. With ``axis_name`` the losses are
  averaged over it like the gradients, so every replica keeps the same state.

  Args:
    num_exits: K, the number of exits, a positive int, to size
      :class:`AdaLossState`; required.
    decay: the running average's decay in ``[0, 1)``: each step the average
      moves to ``decay * average + (1 - decay) * losses`` (the first step sets
      it to the losses). Default ``0.9``.
    eps: added to the averages before inverting them, ``> 0``. Default ``1e-8``.
    granularity: deprecated and ignored: the weights are the same for every
      group of leaves. Anything but ``None`` warns (``DeprecationWarning``);
      the argument will be removed in anytime-jax 0.4. Default ``None``.
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name: the
      per-exit gradients and the ``losses=`` are averaged over it first, so
      every replica keeps the same state (as in :func:`anytime_jax.gram_weighting`).
      Default ``None`` (no averaging; not needed under ``jit`` with a sharded
      batch).
    diagnostics: keep the last update's weights, gradient norms and cosines in
      the state (:class:`anytime_jax.CombinationDiagnostics`, read with
      :func:`anytime_jax.find_diagnostics`). Default ``False``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose
    ``update(updates, state, params=None, losses=losses)`` takes per-exit gradients, every leaf
    ``[K, *param.shape]``, and the ``[K]`` per-exit losses, and returns ``sum_k w_k g_k``
    (weights summing to K; all 1 at the first step), every leaf ``[*param.shape]`` in its input
    dtype, with the new state (:class:`AdaLossState`, inside a
    :class:`anytime_jax.DiagnosedState` with ``diagnostics=True``). Without ``losses=`` of shape
    ``[K]`` it raises ``ValueError``.

  References:
    * Hu, Dey, Hebert, Bagnell. *Learning Anytime Predictions in Neural Networks via
      Adaptive Loss Balancing*. AAAI 2019. https://arxiv.org/abs/1708.06832

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.adaloss(num_exits=2)
  >>> state = tx.init(None)
  >>> updates, state = tx.update(jac, state, losses=jnp.array([2.0, 0.5]))
  >>> updates['w']  # the first step sums the exits
  Array([0., 1.], dtype=float32)
  >>> updates, state = tx.update(jac, state, losses=jnp.array([2.0, 0.5]))
  >>> np.asarray(updates['w']).round(4)  # then 1 / average loss, to sum K: 0.4, 1.6
  array([-1.2,  1.6], dtype=float32)
  """
  def weighting(losses, state):
    inverse = 1.0 / (state.average + eps)
    w = jnp.where(state.steps > 0, inverse / jnp.sum(inverse) * num_exits, 1.0)
    average = jnp.where(state.steps > 0, decay * state.average + (1 - decay) * losses, losses)
    return w, AdaLossState(average, state.steps + 1)

  return loss_weighting('adaloss', weighting,
                        lambda: AdaLossState(jnp.zeros(num_exits, jnp.float32),
                                             jnp.zeros((), jnp.int32)),
                        num_exits=num_exits, granularity=granularity, axis_name=axis_name,
                        diagnostics=diagnostics)


class UncertaintyState(NamedTuple):
  """State of :func:`uncertainty_weighting`.

  Attributes:
    log_variance: ``[K]`` ``s_k = log sigma_k^2``, learned; exit k's weight is ``exp(-s_k)``.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]
  >>> tx = aj.uncertainty_weighting(num_exits=2)
  >>> _, state = tx.update(jac, tx.init(None), losses=jnp.array([2.0, 0.5]))
  >>> state.log_variance  # s moved by one SGD step
  Array([0.015, 0.   ], dtype=float32)
  """
  log_variance: jax.Array


@register(family='loss_weighting', needs_num_exits=True, reads_losses=True, granular=False)
def uncertainty_weighting(*, num_exits: int, learning_rate: float = 0.01,
                          granularity: Optional[Granularity] = None,
                          axis_name: Optional[Hashable] = None,
                          diagnostics: bool = False) -> optax.GradientTransformationExtraArgs:
  """Uncertainty weighting: exit weights ``exp(-s_k)`` with learned log variances ``s``.

  The loss ``sum_k exp(-s_k) L_k + s_k / 2`` (the paper's classification form, with
  ``s_k = log sigma_k^2``): exit k's gradient is weighted by ``exp(-s_k)``, and each
  step moves ``s`` by SGD at ``learning_rate`` on that loss, ``s_k -= lr (1/2 -
  exp(-s_k) L_k)``, towards ``exp(-s_k) = 1 / (2 L_k)``. (The paper trains ``s``
  with the network's optimizer; here it has its own plain SGD inside the
  transform.) ``s`` starts at 0: the first step is the summed losses' gradient.

  Args:
    num_exits: K, the number of exits, a positive int, to size
      :class:`UncertaintyState`; required.
    learning_rate: the step size, ``> 0``, of the plain SGD step that moves
      ``s`` each update. Default ``0.01``.
    granularity: deprecated and ignored: the weights are the same for every
      group of leaves. Anything but ``None`` warns (``DeprecationWarning``);
      the argument will be removed in anytime-jax 0.4. Default ``None``.
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name: the
      per-exit gradients and the ``losses=`` are averaged over it first, so
      every replica keeps the same state (as in :func:`anytime_jax.gram_weighting`).
      Default ``None`` (no averaging; not needed under ``jit`` with a sharded
      batch).
    diagnostics: keep the last update's weights, gradient norms and cosines in
      the state (:class:`anytime_jax.CombinationDiagnostics`, read with
      :func:`anytime_jax.find_diagnostics`). Default ``False``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose
    ``update(updates, state, params=None, losses=losses)`` takes per-exit gradients, every leaf
    ``[K, *param.shape]``, and the ``[K]`` per-exit losses, and returns ``sum_k exp(-s_k) g_k``
    (with ``s`` as it was before this step), every leaf ``[*param.shape]`` in its input dtype,
    with the new state (:class:`UncertaintyState`, inside a :class:`anytime_jax.DiagnosedState`
    with ``diagnostics=True``). Without ``losses=`` of shape ``[K]`` it raises ``ValueError``.

  References:
    * Kendall, Gal, Cipolla. *Multi-Task Learning Using Uncertainty to Weigh Losses for
      Scene Geometry and Semantics*. CVPR 2018. https://arxiv.org/abs/1705.07115

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]
  >>> tx = aj.uncertainty_weighting(num_exits=2, learning_rate=0.5)
  >>> state = tx.init(None)
  >>> updates, state = tx.update(jac, state, losses=jnp.array([2.0, 0.25]))
  >>> updates['w']  # weights exp(0) = 1: the summed gradient
  Array([0., 1.], dtype=float32)
  >>> np.asarray(state.log_variance).round(4)  # s -= 0.5 * (1/2 - L): up for the larger loss
  array([ 0.75 , -0.125], dtype=float32)
  """
  def weighting(losses, state):
    weights = jnp.exp(-state.log_variance)
    gradient = 0.5 - weights * losses
    return weights, UncertaintyState(state.log_variance - learning_rate * gradient)

  return loss_weighting('uncertainty_weighting', weighting,
                        lambda: UncertaintyState(jnp.zeros(num_exits, jnp.float32)),
                        num_exits=num_exits, granularity=granularity, axis_name=axis_name,
                        diagnostics=diagnostics)


class DWAState(NamedTuple):
  """State of :func:`dwa`.

  Attributes:
    previous: ``[K]`` the (averaged) losses of the last step.
    before: ``[K]`` those of the step before it.
    steps: steps seen.

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]
  >>> tx = aj.dwa(num_exits=2)
  >>> _, state = tx.update(jac, tx.init(None), losses=jnp.array([2.0, 0.5]))
  >>> state.previous, int(state.steps)
  (Array([2. , 0.5], dtype=float32), 1)
  """
  previous: jax.Array
  before: jax.Array
  steps: jax.Array


@register(family='loss_weighting', needs_num_exits=True, reads_losses=True, granular=False)
def dwa(*, num_exits: int, temperature: float = 2.0, decay: float = 0.0,
        granularity: Optional[Granularity] = None, axis_name: Optional[Hashable] = None,
        diagnostics: bool = False) -> optax.GradientTransformationExtraArgs:
  """Dynamic Weight Average: more weight to the exits whose loss fell slowest.

  ``w_k = K softmax_k(r / T)`` with ``r_k = L_k(t-1) / L_k(t-2)``: an exit whose
  loss fell slowly gets more weight. The weights are 1 for the first two steps.
  The paper's ``L(t)`` is the average loss of epoch t; here it is step t's loss,
  or, with ``decay > 0``, its running average (``decay`` close to 1 averages over
  about ``1 / (1 - decay)`` steps, nearer the paper's epochs).

  Args:
    num_exits: K, the number of exits, a positive int, to size
      :class:`DWAState`; required.
    temperature: T, ``> 0`` (else ``ValueError``): larger values make the
      weights more uniform. Default ``2.0`` (the paper's).
    decay: the losses' running average decay in ``[0, 1)`` (else
      ``ValueError``). Default ``0.0`` (each step's own losses).
    granularity: deprecated and ignored: the weights are the same for every
      group of leaves. Anything but ``None`` warns (``DeprecationWarning``);
      the argument will be removed in anytime-jax 0.4. Default ``None``.
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name: the
      per-exit gradients and the ``losses=`` are averaged over it first, so
      every replica keeps the same state (as in :func:`anytime_jax.gram_weighting`).
      Default ``None`` (no averaging; not needed under ``jit`` with a sharded
      batch).
    diagnostics: keep the last update's weights, gradient norms and cosines in
      the state (:class:`anytime_jax.CombinationDiagnostics`, read with
      :func:`anytime_jax.find_diagnostics`). Default ``False``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose
    ``update(updates, state, params=None, losses=losses)`` takes per-exit gradients, every leaf
    ``[K, *param.shape]``, and the ``[K]`` per-exit losses, and returns ``sum_k w_k g_k``
    (weights summing to K; all 1 for the first two steps), every leaf ``[*param.shape]`` in its
    input dtype, with the new state (:class:`DWAState`, inside a
    :class:`anytime_jax.DiagnosedState` with ``diagnostics=True``). Without ``losses=`` of shape
    ``[K]`` it raises ``ValueError``.

  References:
    * Liu, Johns, Davison. *End-to-End Multi-Task Learning with Attention*. CVPR 2019.
      https://arxiv.org/abs/1803.10704

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]
  >>> tx = aj.dwa(num_exits=2, temperature=1.0)
  >>> state = tx.init(None)
  >>> for losses in ([1.0, 1.0], [0.5, 1.0], [0.4, 0.9]):
  ...   updates, state = tx.update(jac, state, losses=jnp.array(losses))
  >>> np.asarray(updates['w']).round(4)  # 2 softmax([0.5, 1]): 0.7551 g1 + 1.2449 g2
  array([-0.4898,  1.2449], dtype=float32)
  """
  # Checked when given as numbers; optax.inject_hyperparams passes arrays.
  if isinstance(temperature, (int, float)) and not temperature > 0:
    raise ValueError(f'dwa(temperature=...) must be positive, got {temperature!r}.')
  if isinstance(decay, (int, float)) and not 0.0 <= decay < 1.0:
    raise ValueError(f'dwa(decay=...) must be in [0, 1), got {decay!r}.')

  def weighting(losses, state):
    ratio = state.previous / jnp.maximum(state.before, jnp.finfo(jnp.float32).tiny)
    weights = jnp.where(state.steps >= 2, num_exits * jax.nn.softmax(ratio / temperature), 1.0)
    average = jnp.where(state.steps > 0, decay * state.previous + (1 - decay) * losses, losses)
    return weights, DWAState(average, state.previous, state.steps + 1)

  start = lambda: DWAState(jnp.zeros(num_exits, jnp.float32), jnp.zeros(num_exits, jnp.float32),
                           jnp.zeros((), jnp.int32))
  return loss_weighting('dwa', weighting, start,
                        num_exits=num_exits, granularity=granularity, axis_name=axis_name,
                        diagnostics=diagnostics)


class FAMOState(NamedTuple):
  """State of :func:`famo`.

  Attributes:
    logits: ``[K]`` ``xi``; the exits' shares are ``z = softmax(xi)``.
    previous: ``[K]`` the previous step's losses.
    steps: steps seen.

  Example:

  >>> import jax, jax.numpy as jnp, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]
  >>> tx = aj.famo(num_exits=2)
  >>> _, state = tx.update(jac, tx.init(None), losses=jnp.array([2.0, 0.5]))
  >>> jax.nn.softmax(state.logits)  # the exits' shares z, uniform at first
  Array([0.5, 0.5], dtype=float32)
  """
  logits: jax.Array
  previous: jax.Array
  steps: jax.Array


@register(family='loss_weighting', needs_num_exits=True, reads_losses=True, granular=False)
def famo(*, num_exits: int, learning_rate: float = 0.025, weight_decay: float = 0.001,
         eps: float = 1e-8, granularity: Optional[Granularity] = None,
         axis_name: Optional[Hashable] = None,
         diagnostics: bool = False) -> optax.GradientTransformationExtraArgs:
  """FAMO: loss-based exit weights that balance the exits' decrease in log loss.

  The step descends ``sum_k z_k log L_k``: exit k's gradient is weighted by
  ``c z_k / L_k`` with ``c = 1 / sum_k (z_k / L_k)``, ``z = softmax(xi)``. Before it,
  ``xi`` takes one step of the paper's rule, ``xi -= lr (J_z^T delta + wd xi)`` with
  ``delta = log L(t-1) - log L(t)``, so that exits whose log loss fell least gain
  share. The paper measures ``L(t)`` after the update on the same batch (a
  second forward pass); here ``delta`` compares consecutive steps' losses, on
  consecutive batches. Defaults are the authors' (``learning_rate`` 0.025,
  ``weight_decay`` 0.001). The weights sum to 1, not K: the step is about
  ``1/K`` of the summed losses' when the exits' losses are alike.

  Args:
    num_exits: K, the number of exits, a positive int, to size
      :class:`FAMOState`; required.
    learning_rate: the step size, ``> 0``, of the logits ``xi``'s update.
      Default ``0.025`` (the authors').
    weight_decay: the logits' decay ``wd``, ``>= 0``. Default ``0.001`` (the
      authors').
    eps: added to the losses (clipped at 0) before their logarithm, ``> 0``.
      Default ``1e-8``.
    granularity: deprecated and ignored: the weights are the same for every
      group of leaves. Anything but ``None`` warns (``DeprecationWarning``);
      the argument will be removed in anytime-jax 0.4. Default ``None``.
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name: the
      per-exit gradients and the ``losses=`` are averaged over it first, so
      every replica keeps the same state (as in :func:`anytime_jax.gram_weighting`).
      Default ``None`` (no averaging; not needed under ``jit`` with a sharded
      batch).
    diagnostics: keep the last update's weights, gradient norms and cosines in
      the state (:class:`anytime_jax.CombinationDiagnostics`, read with
      :func:`anytime_jax.find_diagnostics`). Default ``False``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose
    ``update(updates, state, params=None, losses=losses)`` takes per-exit gradients, every leaf
    ``[K, *param.shape]``, and the ``[K]`` per-exit losses, and returns ``sum_k w_k g_k`` with
    ``w_k = c z_k / L_k`` (summing to 1), every leaf ``[*param.shape]`` in its input dtype, with
    the new state (:class:`FAMOState`, inside a :class:`anytime_jax.DiagnosedState` with
    ``diagnostics=True``). Without ``losses=`` of shape ``[K]`` it raises ``ValueError``.

  References:
    * Liu, Feng, Stone, Liu. *FAMO: Fast Adaptive Multitask Optimization*. NeurIPS 2023.
      https://arxiv.org/abs/2306.03792

  Example:

  >>> import jax.numpy as jnp, numpy as np, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]
  >>> tx = aj.famo(num_exits=2)
  >>> updates, state = tx.update(jac, tx.init(None), losses=jnp.array([2.0, 0.5]))
  >>> np.asarray(updates['w']).round(4)  # z = [1/2, 1/2]: weights 0.2 and 0.8, by 1 / L
  array([-0.6,  0.8], dtype=float32)
  """
  def weighting(losses, state):
    log_losses = jnp.log(jnp.maximum(losses, 0.0) + eps)
    z = jax.nn.softmax(state.logits)
    delta = state.previous - log_losses
    jacobian_times_delta = z * delta - z * jnp.dot(z, delta)  # (diag z - z z^T) delta
    logits = jnp.where(state.steps > 0, state.logits - learning_rate * (
        jacobian_times_delta + weight_decay * state.logits), state.logits)
    z = jax.nn.softmax(logits)
    share = z / jnp.exp(log_losses)
    weights = share / jnp.sum(share)
    return weights, FAMOState(logits, log_losses, state.steps + 1)

  start = lambda: FAMOState(jnp.zeros(num_exits, jnp.float32), jnp.zeros(num_exits, jnp.float32),
                            jnp.zeros((), jnp.int32))
  return loss_weighting('famo', weighting, start,
                        num_exits=num_exits, granularity=granularity, axis_name=axis_name,
                        diagnostics=diagnostics)
