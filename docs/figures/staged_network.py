"""Your own network: a three-stage network trained with OSGD through ``aj.staged_jacobian``.

Left: each exit's training loss. Right: the norm of exit k's gradient on stage j's parameters at
the first step (exact zeros above the diagonal: exit k reaches stages 1 to k only).

Run from a clone: ``python docs/figures/staged_network.py [OUT.svg]``; the docs build runs it.
"""

import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import anytime_jax as aj


def stage(p, state, h):
  h = jnp.tanh(h @ p['w'])
  return h, h @ p['head'], state


k = jax.random.split(jax.random.key(0), 6)
params = [{'w': jax.random.normal(k[i], (n, 16)) / n ** 0.5,
           'head': jax.random.normal(k[i + 3], (16, 3)) / 4} for i, n in enumerate((8, 16, 16))]
x = jax.random.normal(jax.random.key(1), (256, 8))
y = (x[:, 0] > 0).astype(int) + (x[:, 1] * x[:, 2] > 0)
tx = aj.osgd(0.2)


def exit_loss(k, logits):
  del k  # every exit has the same loss
  return aj.exit_cross_entropy(logits[None], y)[0]


@jax.jit
def step(params, state):
  jac, losses, _ = aj.staged_jacobian([stage] * 3, params, x, exit_loss)
  updates, state = tx.update(jac, state, params)
  return optax.apply_updates(params, updates), state, losses, jac


state, history, norms = tx.init(params), [], None
for i in range(200):
  params, state, losses, jac = step(params, state)
  history.append(losses)
  if i == 0:
    norms = np.array([[float(jnp.sqrt(sum(jnp.sum(g[e] ** 2) for g in jax.tree.leaves(jac[j]))))
                       for j in range(3)] for e in range(3)])

fig, (left, right) = plt.subplots(1, 2, figsize=(7.5, 3.2), layout='constrained')
left.plot(np.stack(history), label=[f'exit {e + 1}' for e in range(3)])
left.set(xlabel='step', ylabel='training loss', yscale='log')
left.legend()
image = right.imshow(norms, cmap='viridis')
right.set(xticks=range(3), xticklabels=[f'stage {j + 1}' for j in range(3)],
          yticks=range(3), yticklabels=[f'exit {e + 1}' for e in range(3)],
          title='|gradient of exit k on stage j|, step 1')
for e in range(3):
  for j in range(3):
    right.text(j, e, f'{norms[e, j]:.2f}', ha='center', va='center',
               color='white' if norms[e, j] < norms.max() / 2 else 'black')
fig.colorbar(image, ax=right)
fig.savefig(sys.argv[1] if len(sys.argv) > 1 else 'staged_network.svg')
