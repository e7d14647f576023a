"""The cost floor: how far OSGD's global weights move in d steps (from ``results/drift.json``).

``python -m experiments.drift --json results/drift.json`` writes the data; this draws it.
Run from a clone: ``python docs/figures/drift.py [OUT.svg]``; the docs build runs it.
"""

import json
import pathlib
import sys

import matplotlib.pyplot as plt
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]
runs = json.loads((ROOT / 'results' / 'drift.json').read_text())
fig, (left, right) = plt.subplots(1, 2, figsize=(7.5, 3.6), layout='constrained')
for name, run in runs.items():
  lags = sorted(run['drift']['lags'], key=int)
  for axis, key in ((left, 'relative_change'), (right, 'cosine')):
    p10, median, p90 = np.array([run['drift']['lags'][d][key] for d in lags]).T
    axis.plot([int(d) for d in lags], median, marker='o', label=name)
    axis.fill_between([int(d) for d in lags], p10, p90, alpha=0.15)
left.set(xscale='log', xlabel='lag d (steps)', ylabel='|w(t+d) - w(t)| / |w(t)|')
right.set(xscale='log', xlabel='lag d (steps)', ylabel='cosine(w(t), w(t+d))')
fig.legend(*left.get_legend_handles_labels(), loc='outside lower center', ncol=2, fontsize=9)
fig.savefig(sys.argv[1] if len(sys.argv) > 1 else 'drift.svg')
