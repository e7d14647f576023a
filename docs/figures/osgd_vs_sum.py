"""Getting started: a two-exit network trained with OSGD and with the summed loss, each then Adam.

Run from a clone: ``python docs/figures/osgd_vs_sum.py [OUT.svg]``; the docs build runs it.
"""

import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import optax

import anytime_jax as aj


class TwoExits(nn.Module):

  @nn.compact
  def __call__(self, x):
    h1 = nn.relu(nn.Dense(32)(x))
    h2 = nn.relu(nn.Dense(32)(h1))
    return jnp.stack([nn.Dense(3)(h1), nn.Dense(3)(h2)])


def losses(params, x, y):
  return aj.exit_cross_entropy(TwoExits().apply(params, x), y)


x = jax.random.normal(jax.random.key(0), (256, 4))
y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
init = TwoExits().init(jax.random.key(1), x)


def train(head, steps=300):
  tx = optax.chain(head, optax.adam(3e-3))
  params, state = init, tx.init(init)

  @jax.jit
  def step(params, state):
    jac, l, _ = aj.exit_jacobian(losses, params, x, y)
    updates, state = tx.update(jac, state, params)
    return optax.apply_updates(params, updates), state, l

  history = []
  for _ in range(steps):
    params, state, l = step(params, state)
    history.append(l)
  return jnp.stack(history)


fig, ax = plt.subplots(figsize=(7, 3.4), layout='constrained')
for label, head, style in (('OSGD', aj.orthogonalize(), '-'),
                          ('summed losses', aj.sum_exits(), '--')):
  history = train(head)
  for k in range(2):
    ax.plot(history[:, k], style, color=f'C{k}', label=f'{label}, exit {k + 1}')
ax.set(xlabel='step', ylabel='training loss', yscale='log')
ax.legend()
fig.savefig(sys.argv[1] if len(sys.argv) > 1 else 'osgd_vs_sum.svg')
