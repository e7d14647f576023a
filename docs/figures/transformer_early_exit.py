"""Your own NNX transformer: the guide's code, run as it stands on the page, then its early exit.

Runs the first Python block of ``docs/guides/your_transformer.md`` (the whole guide's code), then
draws the trained network's early exit at confidence thresholds 0.2 to 1.0.

Run from a clone: ``python docs/figures/transformer_early_exit.py [OUT.svg]``; the docs build runs
it.
"""

import pathlib
import re
import sys

import matplotlib.pyplot as plt
import numpy as np

DOCS = pathlib.Path(__file__).resolve().parents[1]
page = (DOCS / 'guides' / 'your_transformer.md').read_text()
guide: dict = {}
exec(re.search(r'```python\n(.*?)```', page, re.S).group(1), guide)  # pylint: disable=exec-used
aj, model, x_test, y_test, flops = (guide[k] for k in ('aj', 'model', 'x_test', 'y_test', 'flops'))

results = [aj.early_exit(model, x_test, threshold=t) for t in np.linspace(0.2, 1.0, 9)]
cost, accuracy = zip(*sorted((float(r.flops.mean() / flops[-1]),
                              float(np.mean(r.predictions == y_test))) for r in results))
fig, axis = plt.subplots(figsize=(6, 3.4), layout='constrained')
axis.plot(cost, accuracy, marker='o', label='early exit, thresholds 0.2 to 1.0')
axis.plot([flops[0] / flops[-1], 1.0], np.asarray(aj.exit_accuracy(
    np.stack(list(aj.iterate_exits(model, x_test))), y_test)), 's', label='exit 1, exit 2')
axis.set(xlabel='mean cost per image (fraction of exit 2)', ylabel='test accuracy')
axis.legend(fontsize=9)
fig.savefig(sys.argv[1] if len(sys.argv) > 1 else 'transformer_early_exit.svg')
