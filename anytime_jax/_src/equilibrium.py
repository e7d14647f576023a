"""Gradient equilibrium (Li, Zhang, Qi, Yang, Huang, *Improved Techniques for Training Adaptive
Deep Networks*, ICCV 2019) as a transformation of per-exit gradients.

The paper rescales the backward pass of a network with an exit after every
stage: at stage k's output (0-based, K exits) the gradient is multiplied by
``1 / (K - k)`` before it splits into exit k's classifier and the rest of the
trunk, and the trunk's share by ``K - k - 1`` after it. Multiplied along the
trunk, the factors telescope: exit j's gradient reaches stage k's trunk
parameters scaled by ``1 / (K - k)``, one over the number of exits that depend
on them, whichever j; each classifier keeps its own exit's gradient. On
per-exit gradients that is a per-parameter scale, ``1 / (number of exits whose
gradient reaches the parameter)``, which :func:`gradient_equilibrium` applies
before any combination. For a branched network it is the paper's method exactly
(tested against the junction rescaling); on a nested network, where every exit
reaches every earlier stage, it is our extension of it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from anytime_jax._src import gram as gram_lib


def gradient_equilibrium() -> optax.GradientTransformation:
  """Scales each exit's gradient on a parameter by one over the number of exits reaching it.

  Per-exit gradients in and out (every leaf ``[K, *param.shape]``): chain a
  combination after it, ``optax.chain(aj.gradient_equilibrium(), aj.sum_exits(),
  optax.sgd(...))`` being the paper's training. An exit reaches a parameter
  tensor where its gradient there is not exactly zero; a tensor no exit
  reaches is left at zero.

  The paper rescales the backward pass at every stage's output so that exit
  j's gradient reaches stage k's trunk scaled by ``1 / (K - k)`` (0-based),
  one over the number of exits that depend on it, and each classifier keeps
  its own exit's gradient; on per-exit gradients that is this per-parameter
  scale. For a branched network it is the paper's method exactly; on a nested
  network, where every exit reaches every earlier stage, it is our extension
  of it (see the module's docstring). It takes no arguments.

  Returns:
    An ``optax.GradientTransformation`` whose ``update(updates, state,
    params=None)`` takes per-exit gradients, every leaf ``[K, *param.shape]``,
    and returns them, same shapes and dtypes, each leaf divided by the number
    of exits whose gradient on it is not exactly zero (at least 1), with
    ``optax.EmptyState()``.

  References:
    * Li, Zhang, Qi, Yang, Huang. *Improved Techniques for Training Adaptive Deep
      Networks*. ICCV 2019. https://arxiv.org/abs/1908.06294

  Example: a trunk reached by both exits, a head reached by the second only:

  >>> import jax.numpy as jnp, optax, anytime_jax as aj
  >>> jac = {'trunk': jnp.array([[2.0], [4.0]]), 'head2': jnp.array([[0.0], [6.0]])}
  >>> tx = optax.chain(aj.gradient_equilibrium(), aj.sum_exits())
  >>> out, _ = tx.update(jac, tx.init(None))
  >>> out['trunk'], out['head2']  # the mean of 2 and 4; the head's own gradient
  (Array([3.], dtype=float32), Array([6.], dtype=float32))
  """
  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    gram_lib.check_exit_axis(updates, params)

    def scale(leaf):
      reached = jnp.any(leaf.reshape(leaf.shape[0], -1) != 0, axis=1)
      count = jnp.sum(reached)
      return leaf / jnp.maximum(count, 1).astype(leaf.dtype)

    return jax.tree.map(scale, updates), state

  return optax.GradientTransformation(init_fn, update_fn)
