"""The methods side by side: three conflicting exit gradients and the direction each method returns.

One panel a method: the three exits' gradients (grey) and the method's direction, scaled to unit
length (colour). Under each panel, the first-order change of each exit's loss along that unit
direction, -<g_k, d>: negative is descent, positive (red) is a step uphill for that exit.

Run from a clone: ``python docs/figures/methods.py [OUT.svg]``; the docs build runs it.
"""

import sys

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

import anytime_jax as aj

rows = np.array([[1.0, 0.2], [-1.2, 0.9], [1.5, 0.4]])  # exit k's gradient, k = 1, 2, 3
methods = {'sum': aj.sum_exits(), 'OSGD': aj.orthogonalize(), 'PCGrad': aj.pcgrad(),
           'MGDA': aj.mgda(), 'UPGrad': aj.upgrad(), 'DualProj': aj.dualproj(),
           'CAGrad': aj.cagrad(), 'IMTL-G': aj.imtl_g(), 'Aligned-MTL': aj.aligned_mtl(),
           'Nash-MTL': aj.nash_mtl(), 'ConFIG': aj.conflict_free(), 'FairGrad': aj.fairgrad()}

labels = [((1.02, 0.12), 'left', 'top'), ((-1.2, 0.95), 'center', 'bottom'),
          ((1.52, 0.42), 'left', 'bottom')]  # where each gradient's name goes, clear of the others
fig, axes = plt.subplots(4, 3, figsize=(7, 5.6), layout='constrained')
for (name, tx), axis in zip(methods.items(), axes.flat):
  d = np.asarray(jax.jit(tx.update)({'w': jnp.asarray(rows, jnp.float32)}, tx.init(None))[0]['w'])
  d = d / np.linalg.norm(d)
  for g, (at, ha, va), k in zip(rows, labels, range(3)):
    axis.annotate('', g, (0, 0), arrowprops={'arrowstyle': '->', 'color': '0.6', 'lw': 1})
    axis.text(*at, f'g{k + 1}', color='0.4', fontsize=9, ha=ha, va=va)
  axis.annotate('', d, (0, 0), arrowprops={'arrowstyle': '-|>', 'color': 'C0', 'lw': 2.4,
                                           'mutation_scale': 14})
  axis.set_title(name, fontsize=11, fontweight='bold', pad=3)
  change = -(rows @ d)  # first-order change of each exit's loss along the unit direction
  for k, c in enumerate(np.round(change, 2) + 0.0):
    axis.text(0.02 + 0.34 * k, -0.04, f'{k + 1}: {c:+.2f}', transform=axis.transAxes,
              fontsize=9.5, ha='left', va='top', color='C3' if c > 0 else '0.2',
              fontweight='bold' if c > 0 else 'normal')
  axis.set(xlim=(-1.5, 1.95), ylim=(-0.15, 1.2), aspect='equal', xticks=[], yticks=[])
  axis.axhline(0, color='0.88', lw=0.6, zorder=0)
  axis.axvline(0, color='0.88', lw=0.6, zorder=0)
fig.supxlabel('under each panel, exit k: the first-order change of its loss along the unit\n'
              'direction (< 0: descent; red: uphill)', fontsize=9.5)
fig.savefig(sys.argv[1] if len(sys.argv) > 1 else 'methods.svg')
