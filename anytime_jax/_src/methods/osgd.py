"""Orthogonalized SGD (OSGD) as an optax gradient transformation.

Wan, Hoffmann, Lu, Maire. *Orthogonalized SGD and Nested Architectures for
Anytime Neural Networks*. ICML 2020. https://arxiv.org/abs/2008.06635

Exit gradients g_1..g_K are Gram-Schmidt orthogonalized in exit order (the
earliest exit keeps its gradient, each later one keeps only what is orthogonal
to all earlier ones) and summed. The sum of the Gram-Schmidt vectors is a
linear combination ``sum_k u_k = sum_j w_j g_j`` whose weights depend only on
the ``[K, K]`` Gram matrix, so the transformation never flattens the parameter
vector: one ``[K, K]`` contraction per leaf, a tiny solve, one weighted sum per
leaf (see :mod:`anytime_jax.gram`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal, Optional

import jax
import jax.numpy as jnp
import optax

from anytime_jax._src import combination as combination_lib
from anytime_jax._src import gram as gram_lib
from anytime_jax._src.registry import register

Rescale = Optional[Literal['exit_norm', 'sum_norm']]
RESCALE_OPTIONS = (None, 'exit_norm', 'sum_norm')
ALGORITHMS = ('gram', 'vectors')


def gram_schmidt_coefficients(gram: jax.Array, eps: float | jax.Array = 1e-5,
                              priority: Optional[Sequence[int]] = None) -> jax.Array:
  """Gram-Schmidt in coefficient space: the kept vectors ``u_k`` as combinations of the ``g_j``.

  Exit k keeps ``u_k``, what of ``g_k`` is orthogonal to the kept vectors of the
  exits orthogonalized before it. Since every ``u_k`` is a combination of the
  ``g_j``, the coefficients follow from the Gram matrix alone: classical
  Gram-Schmidt run twice per exit ("twice is enough"), on device, without
  touching the gradients themselves.

  Args:
    gram: ``[K, K]`` Gram matrix ``G[i, j] = <g_i, g_j>`` (float32), symmetric
      positive semi-definite.
    eps: relative threshold, ``>= 0``: a Gram-Schmidt vector with
      ``|u_k|^2 <= eps * |g_k|^2`` is treated as exactly zero (zero gradients,
      gradients in the span of earlier ones). Keeps the result finite and
      drops directions that float32 cannot resolve. Default ``1e-5``.
    priority: order in which exits are orthogonalized, a permutation of
      ``range(K)``; the first one listed keeps its gradient. Default ``None``
      (exit order ``0, 1, ..., K-1``).

  Returns:
    ``[K, K]`` matrix ``C`` with ``u_k = sum_j C[k, j] g_j``; row ``k`` belongs
    to exit ``k`` (in exit order, whatever the priority).

  References:
    * Wan, Hoffmann, Lu, Maire. *Orthogonalized SGD and Nested Architectures for Anytime
      Neural Networks*. ICML 2020. https://arxiv.org/abs/2008.06635
    * Giraud, Langou, Rozložník, van den Eshof. *Rounding error analysis of the classical
      Gram-Schmidt orthogonalization process*. Numerische Mathematik 101(1), 2005 (two
      passes of classical Gram-Schmidt are enough).
  """
  num_exits = gram.shape[-1]
  order = jnp.arange(num_exits) if priority is None else jnp.asarray(priority)
  g = gram[order][:, order]
  tiny = jnp.finfo(g.dtype).tiny
  diag = jnp.diagonal(g)

  def step(k, coeffs):
    earlier = (jnp.arange(num_exits) < k).astype(g.dtype)
    a = jax.nn.one_hot(k, num_exits, dtype=g.dtype)
    # Classical Gram-Schmidt against the finished rows, twice: "twice is
    # enough" gives modified-Gram-Schmidt accuracy without a loop over j.
    for _ in range(2):
      cg = coeffs @ g
      norms = jnp.sum(cg * coeffs, axis=1)
      proj = (cg @ a) / jnp.where(norms > 0, norms, 1.0)
      a = a - (earlier * proj) @ coeffs
    # Written so that NaN counts as alive: non-finite gradients propagate, never vanish.
    alive = ~(a @ g @ a <= eps * diag[k] + tiny)
    return coeffs.at[k].set(jnp.where(alive, a, 0.0))

  coeffs = jax.lax.fori_loop(0, num_exits, step, jnp.zeros_like(g))
  # Back to exit order: rows and columns of the permuted problem.
  inverse = jnp.argsort(order)
  return coeffs[inverse][:, inverse]


def rescale_coefficients(coeffs: jax.Array, gram: jax.Array, rescale: Rescale) -> jax.Array:
  """Applies a rescaling to Gram-Schmidt coefficients (``[K, K]``, rows = exits).

  * ``None``: the plain Gram-Schmidt vectors (the paper's OSGD).
  * ``'exit_norm'``: each non-zero u_k is scaled to the norm of its g_k, so
    every exit keeps its step size and only its direction changes.
  * ``'sum_norm'``: the summed direction is scaled to the norm of the plain
    summed gradient ``|sum_k g_k|``: OSGD's direction at summed-loss SGD's
    step size (a fair comparison at one learning rate).

  Args:
    coeffs: ``[K, K]`` Gram-Schmidt coefficients, row k exit k's kept vector
      over the ``g_j`` (:func:`gram_schmidt_coefficients`).
    gram: ``[K, K]`` Gram matrix of the same gradients, which gives the norms.
    rescale: ``None``, ``'exit_norm'`` or ``'sum_norm'``, as above; anything
      else raises ``ValueError``.

  Returns:
    ``[K, K]`` the rescaled coefficients (``coeffs`` itself for ``None``); a
    kept vector or summed direction of norm 0 stays 0.

  References:
    * Wan, Hoffmann, Lu, Maire. *Orthogonalized SGD and Nested Architectures for Anytime
      Neural Networks*. ICML 2020. https://arxiv.org/abs/2008.06635 (``None``; the two
      rescalings are this library's).
  """
  if rescale is None:
    return coeffs
  if rescale == 'exit_norm':
    u_norms = jnp.sqrt(jnp.maximum(jnp.einsum('ki,ij,kj->k', coeffs, gram, coeffs), 0.0))
    g_norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    scale = jnp.where(u_norms > 0, g_norms / jnp.where(u_norms > 0, u_norms, 1.0), 0.0)
    return coeffs * scale[:, None]
  if rescale == 'sum_norm':
    w = jnp.sum(coeffs, axis=0)
    ones = jnp.ones_like(w)
    sum_norm2 = ones @ gram @ ones
    ortho_norm2 = w @ gram @ w
    scale = jnp.where(ortho_norm2 > 0,
                      jnp.sqrt(jnp.maximum(sum_norm2, 0.0) / jnp.where(ortho_norm2 > 0, ortho_norm2, 1.0)),
                      0.0)
    return coeffs * scale
  raise ValueError(f'Unknown rescale {rescale!r}; choose one of {RESCALE_OPTIONS}.')


def gram_schmidt_vectors(rows: jax.Array, eps: float = 1e-5,
                         priority: Optional[Sequence[int]] = None) -> jax.Array:
  """Gram-Schmidt on the vectors themselves: ``[K, D]`` rows to the kept ``u_k`` ``[K, D]``.

  Modified Gram-Schmidt with a second pass ("twice is enough") in float32:
  the kept vectors are orthogonal to float32 accuracy even for nearly
  collinear exit gradients, where the Gram-matrix path's accuracy is float32's
  epsilon times the Gram matrix's condition number. Same conventions as
  :func:`gram_schmidt_coefficients` (``eps``, ``priority``; rows stay in exit
  order).

  Args:
    rows: ``[K, D]`` the exits' flattened gradients, one row per exit (cast to
      float32).
    eps: relative threshold, ``>= 0``: a kept vector with
      ``|u_k|^2 <= eps * |g_k|^2`` is treated as exactly zero, as in
      :func:`gram_schmidt_coefficients`. Default ``1e-5``.
    priority: order in which exits are orthogonalized, a permutation of
      ``range(K)``; the first one listed keeps its gradient. Default ``None``
      (exit order).

  Returns:
    ``[K, D]`` float32, row k exit k's kept vector ``u_k``.

  References:
    * Wan, Hoffmann, Lu, Maire. *Orthogonalized SGD and Nested Architectures for Anytime
      Neural Networks*. ICML 2020. https://arxiv.org/abs/2008.06635
    * Giraud, Langou, Rozložník, van den Eshof. *Rounding error analysis of the classical
      Gram-Schmidt orthogonalization process*. Numerische Mathematik 101(1), 2005 (the
      second pass, shown there for classical Gram-Schmidt).
  """
  rows = rows.astype(jnp.float32)
  order = range(rows.shape[0]) if priority is None else priority
  tiny = jnp.finfo(jnp.float32).tiny
  kept: dict[int, jax.Array] = {}
  for k in order:
    u = rows[k]
    for _ in range(2):
      for v in kept.values():
        norm = jnp.vdot(v, v)
        u = u - jnp.where(norm > 0, jnp.vdot(v, u) / jnp.where(norm > 0, norm, 1.0), 0.0) * v
    alive = ~(jnp.vdot(u, u) <= eps * jnp.vdot(rows[k], rows[k]) + tiny)  # NaN stays (as above)
    kept[k] = jnp.where(alive, u, 0.0)
  return jnp.stack([kept[k] for k in range(rows.shape[0])])


def orthogonalize_vectors(rows: jax.Array, eps: float = 1e-5,
                          priority: Optional[Sequence[int]] = None,
                          rescale: Rescale = None) -> jax.Array:
  """``sum_k u_k`` of :func:`gram_schmidt_vectors`, rescaled as in :func:`rescale_coefficients`.

  Returns:
    ``[D]`` float32.
  """
  rows = rows.astype(jnp.float32)
  u = gram_schmidt_vectors(rows, eps, priority)
  if rescale == 'exit_norm':
    u_norms = jnp.linalg.norm(u, axis=1, keepdims=True)
    g_norms = jnp.linalg.norm(rows, axis=1, keepdims=True)
    u = jnp.where(u_norms > 0, u * g_norms / jnp.where(u_norms > 0, u_norms, 1.0), 0.0)
  total = jnp.sum(u, axis=0)
  if rescale == 'sum_norm':
    norm = jnp.linalg.norm(total)
    total = jnp.where(norm > 0, total * jnp.linalg.norm(jnp.sum(rows, axis=0))
                      / jnp.where(norm > 0, norm, 1.0), 0.0)
  return total


def _combine_by_vectors(eps: float, priority: Optional[Sequence[int]], rescale: Rescale):
  """A group combine for :func:`combination`: per group, flatten
  its leaves to ``[K, D]``, orthogonalize the vectors, split back (the weights are unused)."""
  def combine(updates, weights, ids, num_groups):
    del weights
    leaves, treedef = jax.tree_util.tree_flatten(updates)
    out = [None] * len(leaves)
    for group in range(num_groups):
      members = [i for i, gid in enumerate(ids) if gid == group]
      rows = jnp.concatenate([leaves[i].reshape(leaves[i].shape[0], -1).astype(jnp.float32)
                              for i in members], axis=1)
      total = orthogonalize_vectors(rows, eps, priority, rescale)
      offset = 0
      for i in members:
        size = leaves[i][0].size
        out[i] = total[offset:offset + size].reshape(leaves[i].shape[1:]).astype(leaves[i].dtype)
        offset += size
    return jax.tree_util.tree_unflatten(treedef, out)
  return combine


def _check_priority(priority: Optional[Sequence[int]], num_exits: int) -> None:
  if priority is not None and sorted(priority) != list(range(num_exits)):
    raise ValueError(
        f'priority={tuple(priority)} is not a permutation of the {num_exits} '
        f'exits; give each of 0..{num_exits - 1} exactly once (earliest '
        'orthogonalized first).')


@register(family='orthogonalization', descent='first', ordered=True)
def orthogonalize(
    *,
    granularity: gram_lib.Granularity = 'exits',
    rescale: Rescale = None,
    eps: float = 1e-5,
    priority: Optional[Sequence[int]] = None,
    algorithm: Literal['gram', 'vectors'] = 'gram',
    axis_name: Optional[Hashable] = None,
    diagnostics: bool = False,
    num_exits: Optional[int] = None,
) -> optax.GradientTransformationExtraArgs:
  """Orthogonalizes per-exit gradients in exit order and sums them (OSGD).

  Use it as the first element of a chain: it takes updates whose every leaf has
  a leading exit axis ``[K, *param.shape]`` (earliest exit first, as returned by
  :func:`anytime_jax.exit_jacobian`) and returns ordinary ``[*param.shape]``
  updates, so every later transformation sees plain gradients.

  Gram-Schmidt is not linear: averaging over devices or micro-batches must
  happen on the per-exit gradients *before* this transformation. Under ``jit``
  with the batch sharded over a mesh, computing the per-exit gradients of the
  global-batch losses does exactly that. Never wrap a chain that contains this
  transformation in ``optax.MultiSteps`` (it would average orthogonalized
  directions); use :func:`anytime_jax.accumulate_exits`.

  Args:
    granularity: how leaves are grouped, each group with its own Gram-Schmidt
      (:data:`anytime_jax.gram.Granularity`). Default ``'exits'``: leaves reached
      by the same set of exits are orthogonalized together, so each exit's head
      keeps its own gradient and each shared part gets its own Gram-Schmidt.
      ``'leaf'``: each parameter tensor on its own. ``'global'``: one Gram-Schmidt
      over the whole parameter vector; beware that a leaf only exit k reaches
      then moves by ``w_k g_k`` with ``w_k`` set by the shared parameters, and
      ``w_k < 0`` (uphill on that head) whenever later exits lean on ``g_k``. Or
      a partition.
    rescale: ``None``, ``'exit_norm'`` or ``'sum_norm'``; see
      :func:`rescale_coefficients`. Default ``None`` (the paper's OSGD: the
      plain sum of the Gram-Schmidt vectors).
    eps: relative threshold, ``>= 0``, below which a Gram-Schmidt vector counts
      as zero (``|u_k|^2 <= eps |g_k|^2``), keeping zero and collinear exit
      gradients finite (see :func:`gram_schmidt_coefficients`). Default ``1e-5``.
    priority: order of orthogonalization, a permutation of ``range(K)``; the
      first one listed keeps its gradient. Default ``None`` (exit order, the
      earliest exit first).
    algorithm: ``'gram'`` (default): Gram-Schmidt in coefficient space from the
      ``[K, K]`` Gram matrix, never flattening a group; its accuracy is float32's
      epsilon times the Gram matrix's condition number. Measured against a
      float64 modified Gram-Schmidt (K up to 8, 100,000 parameters, exit
      gradients nearly collinear, squared residuals between ``eps`` and 1e-2
      of their norm): the summed direction within 7.8e-5 relative error, the
      (implicit) kept vectors orthogonal to an absolute cosine of at most
      1.3e-2. ``'vectors'``: modified Gram-Schmidt with a second pass on the flattened gradients of
      each group (:func:`gram_schmidt_vectors`): 7.9e-8 and 8.1e-9 in the same
      test, at a higher cost (``python -m experiments.bench --methods``);
      it needs a static granularity (not ``'exits'``).
    axis_name: inside ``shard_map`` or ``pmap`` over a data axis, its name:
      the per-exit gradients are averaged over it first (see
      :func:`anytime_jax.gram.average_over`). Default ``None`` (no averaging;
      not needed under ``jit`` with a sharded batch).
    diagnostics: keep the last step's weights, gradient norms and cosines in
      the state (:class:`anytime_jax.CombinationDiagnostics`, read with
      :func:`anytime_jax.find_diagnostics`); needs ``num_exits``. Default
      ``False``.
    num_exits: K, the number of exits, a positive int; needed for
      ``diagnostics``, checked against the updates (and ``priority``) when
      given. Default ``None`` (K read from the updates).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state,
    params=None)`` takes per-exit gradients, every leaf ``[K, *param.shape]``,
    and returns the (rescaled) sum of the Gram-Schmidt vectors per group (every
    leaf ``[*param.shape]``, in its input dtype) with the new state
    (``optax.EmptyState()``, or a :class:`anytime_jax.DiagnosedState` with
    ``diagnostics=True``).

  References:
    * Wan, Hoffmann, Lu, Maire. *Orthogonalized SGD and Nested Architectures for Anytime
      Neural Networks*. ICML 2020. https://arxiv.org/abs/2008.06635

  Example: two exits whose gradients conflict; the second keeps only what is
  orthogonal to the first:

  >>> import jax.numpy as jnp, optax, anytime_jax as aj
  >>> tx = optax.chain(aj.orthogonalize(), optax.sgd(0.1))
  >>> params = {'w': jnp.zeros(2)}
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]
  >>> updates, _ = tx.update(jac, tx.init(params), params)
  >>> updates['w']  # -0.1 * ([1, 0] + [0, 1])
  Array([-0.1, -0.1], dtype=float32)
  """
  if rescale not in RESCALE_OPTIONS:
    raise ValueError(f'Unknown rescale {rescale!r}; choose one of {RESCALE_OPTIONS}.')
  if algorithm not in ALGORITHMS:
    raise ValueError(f'Unknown algorithm {algorithm!r}; choose one of {ALGORITHMS}.')
  if algorithm == 'vectors' and isinstance(granularity, str) and granularity == 'exits':
    raise ValueError("algorithm='vectors' needs a static grouping: granularity='leaf', "
                     "'global' or a partition ('exits' groups leaves on device).")
  if num_exits is not None:
    _check_priority(priority, num_exits)

  def weighting(gram):
    _check_priority(priority, gram.shape[-1])
    coeffs = rescale_coefficients(gram_schmidt_coefficients(gram, eps, priority), gram, rescale)
    return jnp.sum(coeffs, axis=0)

  return combination_lib.combination(
      weighting, granularity=granularity, init_state=None, axis_name=axis_name,
      diagnostics=diagnostics, num_exits=num_exits,
      combine=_combine_by_vectors(eps, priority, rescale) if algorithm == 'vectors' else None)


def osgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    momentum: Optional[float] = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    granularity: gram_lib.Granularity = 'exits',
    rescale: Rescale = None,
    eps: float = 1e-5,
    priority: Optional[Sequence[int]] = None,
    algorithm: Literal['gram', 'vectors'] = 'gram',
    axis_name: Optional[Hashable] = None,
    diagnostics: bool = False,
    num_exits: Optional[int] = None,
) -> optax.GradientTransformationExtraArgs:
  """OSGD with momentum: :func:`orthogonalize` chained with SGD.

  Weight decay is decoupled (SGDW, Loshchilov & Hutter 2019): it is applied to
  the parameters after momentum, scaled by the learning rate, and is neither
  orthogonalized nor accumulated in the momentum.

  The orthogonalization options are spelled out (not ``**kwargs``) so that
  ``optax.inject_hyperparams(osgd)`` sees them; pass
  ``static_args=('num_exits', 'diagnostics')`` there when you use those two.

  Args:
    learning_rate: the step size, a positive float or an optax schedule of the
      step count; required.
    momentum: momentum coefficient (``optax.trace``'s decay, usually in
      ``[0, 1)``), or ``None`` for plain SGD. Default ``0.9``.
    nesterov: use Nesterov momentum (ignored when ``momentum`` is ``None``).
      Default ``False``.
    weight_decay: decoupled weight decay coefficient, ``>= 0``: the update adds
      ``weight_decay * params`` after momentum, before the learning rate, so
      ``update`` then needs ``params``. Default ``0.0`` (none).
    granularity: how leaves are grouped, each group with its own Gram-Schmidt,
      as in :func:`orthogonalize`. Default ``'exits'``.
    rescale: ``None``, ``'exit_norm'`` or ``'sum_norm'``, as in
      :func:`orthogonalize`. Default ``None`` (the paper's OSGD).
    eps: relative threshold below which a Gram-Schmidt vector counts as zero,
      as in :func:`orthogonalize`. Default ``1e-5``.
    priority: order of orthogonalization, a permutation of ``range(K)``, as in
      :func:`orthogonalize`. Default ``None`` (exit order).
    algorithm: ``'gram'`` or ``'vectors'``, as in :func:`orthogonalize`.
      Default ``'gram'``.
    axis_name: inside ``shard_map`` or ``pmap``, the data axis the per-exit
      gradients are averaged over first, as in :func:`orthogonalize`. Default
      ``None``.
    diagnostics: keep the last step's weights in the state, as in
      :func:`orthogonalize`; needs ``num_exits``. Default ``False``.
    num_exits: K, the number of exits, as in :func:`orthogonalize`. Default
      ``None`` (read from the updates).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose ``update(updates, state,
    params=None)`` takes per-exit gradients, every leaf ``[K, *param.shape]``,
    and returns the parameter update ``-learning_rate * (momentum of sum_k u_k
    + weight_decay * params)``, every leaf ``[*param.shape]``, with the chain's
    new state.

  References:
    * Wan, Hoffmann, Lu, Maire. *Orthogonalized SGD and Nested Architectures for Anytime
      Neural Networks*. ICML 2020. https://arxiv.org/abs/2008.06635
    * Loshchilov, Hutter. *Decoupled Weight Decay Regularization*. ICLR 2019.
      https://arxiv.org/abs/1711.05101

  Example:

  >>> import jax.numpy as jnp, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = aj.osgd(0.1, momentum=None)
  >>> params = {'w': jnp.zeros(2)}
  >>> updates, _ = tx.update(jac, tx.init(params), params)
  >>> updates['w']  # -0.1 * ([1, 0] + [0, 1])
  Array([-0.1, -0.1], dtype=float32)
  """
  return optax.chain(
      orthogonalize(granularity=granularity, rescale=rescale, eps=eps,
                    priority=priority, diagnostics=diagnostics,
                    num_exits=num_exits, algorithm=algorithm, axis_name=axis_name),
      sgd_tail(learning_rate, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))


def sgd_tail(learning_rate: optax.ScalarOrSchedule, *, momentum: Optional[float] = 0.9,
             nesterov: bool = False, weight_decay: float = 0.0
             ) -> optax.GradientTransformation:
  """SGD with momentum and decoupled weight decay, for after an exit combination.

  ``optax.chain(aj.pcgrad(), aj.sgd_tail(0.1, weight_decay=5e-4))`` is PCGrad
  with the update rule of :func:`osgd`: momentum on the combined gradient, then
  weight decay decoupled from it (SGDW: applied to the parameters after momentum,
  scaled by the learning rate, never accumulated in the momentum).

  Args:
    learning_rate: the step size, a positive float or an optax schedule of the
      step count; required.
    momentum: momentum coefficient (``optax.trace``'s decay, usually in
      ``[0, 1)``), or ``None`` for plain SGD. Default ``0.9``.
    nesterov: use Nesterov momentum (ignored when ``momentum`` is ``None``).
      Default ``False``.
    weight_decay: decoupled weight decay coefficient, ``>= 0``: the update adds
      ``weight_decay * params`` after momentum, before the learning rate, so
      ``update`` then needs ``params``. A literal 0 leaves the term out;
      an array (from ``optax.inject_hyperparams``) keeps it. Default ``0.0``
      (none).

  Returns:
    An ``optax.GradientTransformation`` that takes ordinary gradients (every
    leaf ``[*param.shape]``, e.g. a combination's output) and returns the
    parameter update ``-learning_rate * (momentum of the gradients +
    weight_decay * params)``, with the new state.

  References:
    * Loshchilov, Hutter. *Decoupled Weight Decay Regularization*. ICLR 2019.
      https://arxiv.org/abs/1711.05101
    * Sutskever, Martens, Dahl, Hinton. *On the importance of initialization and
      momentum in deep learning*. ICML 2013 (momentum and its Nesterov form).

  Example:

  >>> import jax.numpy as jnp, optax, anytime_jax as aj
  >>> jac = {'w': jnp.array([[1.0, 0.0], [-1.0, 1.0]])}  # [K=2, *w.shape]: conflicting exits
  >>> tx = optax.chain(aj.pcgrad(), aj.sgd_tail(0.1, momentum=None))
  >>> params = {'w': jnp.zeros(2)}
  >>> updates, _ = tx.update(jac, tx.init(params), params)
  >>> updates['w']  # -0.1 * PCGrad's direction [0.5, 1.5]
  Array([-0.05, -0.15], dtype=float32)
  """
  return optax.chain(
      (optax.trace(decay=momentum, nesterov=nesterov)
       if momentum is not None else optax.identity()),
      # A literal 0 skips the term (and the need for params); an injected
      # hyperparameter is an array and keeps it.
      (optax.identity() if isinstance(weight_decay, (int, float)) and weight_decay == 0
       else optax.add_decayed_weights(weight_decay)),
      optax.scale_by_learning_rate(learning_rate),
  )
