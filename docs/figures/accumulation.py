"""Training at scale: gradient accumulation with OSGD on a toy two-exit network.

One batch of 256 against four micro-batches of 64 through ``aj.accumulate_exits`` (the same
curve) and four micro-batches whose orthogonalized directions are averaged (a different method).

Run from a clone: ``python docs/figures/accumulation.py [OUT.svg]``; the docs build runs it.
"""

import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax

import anytime_jax as aj


def losses(params, x, y):  # two exits on one shared layer: [K=2]
  h = jnp.tanh(x @ params['shared'])
  deep = jnp.tanh(h @ params['deep'])
  return aj.exit_cross_entropy(jnp.stack([h @ params['head1'], deep @ params['head2']]), y)


rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(256, 8)), jnp.float32)
y = jnp.asarray((x[:, 0] > 0).astype(int) + 2 * (x[:, 1] * x[:, 2] > 0))
shapes = {'shared': (8, 16), 'deep': (16, 16), 'head1': (16, 4), 'head2': (16, 4)}
init = {k: jnp.asarray(rng.normal(size=s) / np.sqrt(s[0]), jnp.float32)
        for k, s in shapes.items()}
jacobian = jax.jit(lambda p, x, y: aj.exit_jacobian(losses, p, x, y))


def train(tx, micro, steps=60):
  params, state, history, update = init, tx.init(init), [], jax.jit(tx.update)
  for _ in range(steps):
    for part in np.split(np.arange(256), micro):
      jac, _, _ = jacobian(params, x[part], y[part])
      updates, state = update(jac, state, params)
      params = optax.apply_updates(params, updates)
    history.append(losses(params, x, y))
  return np.stack(history)


runs = {
    'one batch of 256, osgd': (train(aj.osgd(0.5), 1), '-'),
    '4 micro-batches, accumulate_exits(osgd)':
        (train(aj.accumulate_exits(aj.osgd(0.5), every=4, num_exits=2), 4), ':'),
    '4 micro-batches, averaged after orthogonalize':
        (train(optax.chain(aj.orthogonalize(),
                           optax.MultiSteps(aj.sgd_tail(0.5), every_k_schedule=4)), 4), '--'),
}
fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.8), sharey=True, layout='constrained')
for label, (history, style) in runs.items():
  for k, ax in enumerate(axes):
    ax.plot(history[:, k], style, label=label if k == 0 else None, lw=2.5 if style == ':' else 1.3)
for k, ax in enumerate(axes):
  ax.set(title=f'exit {k + 1}', xlabel='step (256 images)', yscale='log')
axes[0].set_ylabel('training loss')
fig.legend(loc='outside lower center', ncol=2, fontsize=9)
fig.savefig(sys.argv[1] if len(sys.argv) > 1 else 'accumulation.svg')
