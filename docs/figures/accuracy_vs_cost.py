"""Anytime networks: accuracy against cost of a width-nested and a branched network on digits.

Each network is trained for 300 steps with OSGD on scikit-learn's digits. Lines: the accuracy of
the deepest exit whose cumulative FLOPs fit a budget; dots: the early-exit curve, thresholds
calibrated on held-out images (``aj.budgeted_batch_curve``).

Run from a clone: ``python docs/figures/accuracy_vs_cost.py [OUT.svg]``; the docs build runs it.
"""

import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
from sklearn.datasets import load_digits

import anytime_jax as aj

digits = load_digits()
images = (digits.images[..., None] / 16.0).astype(np.float32)
order = np.random.default_rng(0).permutation(len(images))
train, val, test = order[:1200], order[1200:1500], order[1500:]
x, y = jnp.asarray(images[train]), jnp.asarray(digits.target[train])

fig, ax = plt.subplots(figsize=(7, 3.4), layout='constrained')
for color, (name, width) in zip(('C0', 'C1'), (('nested_width', 4), ('branched', 8))):
  network = aj.models.create(name, num_classes=10, num_exits=3, width=width, num_levels=2)
  tx = aj.osgd(0.05, momentum=0.9)
  state = aj.create_train_state(network, tx, jax.random.key(0), x[:1])
  step = jax.jit(aj.make_train_step(network, tx))
  for i in range(300):
    batch = np.random.default_rng(i).choice(len(train), 64, replace=False)
    state, _ = step(state, x[batch], y[batch])
  variables = {'params': state.params, 'batch_stats': state.batch_stats}

  def logits(idx, network=network, variables=variables):
    return network.apply(variables, jnp.asarray(images[idx]))

  mflops = np.array(aj.exit_flops(network, variables, x[:1])) / 1e6
  accuracy = np.asarray(aj.exit_accuracy(logits(test), jnp.asarray(digits.target[test])))
  ax.step(np.r_[mflops, mflops[-1] * 1.5], np.r_[accuracy, accuracy[-1]], where='post',
          color=color, label=f'{name}: deepest exit within budget')
  curve = aj.budgeted_batch_curve(logits(val), jnp.asarray(digits.target[val]), logits(test),
                                  jnp.asarray(digits.target[test]), mflops * 1e6)
  ax.plot([p['flops'] / 1e6 for p in curve], [p['accuracy'] for p in curve], '.', color=color,
          label=f'{name}: early exit')
ax.set(xscale='log', xlabel='MFLOPs per image', ylabel='test accuracy')
ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))
ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
ax.legend(fontsize=9)
fig.savefig(sys.argv[1] if len(sys.argv) > 1 else 'accuracy_vs_cost.svg')
