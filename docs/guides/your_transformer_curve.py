"""The guide's own code, run as it stands on the page, then its network's early-exit curve."""

import pathlib
import re

import matplotlib.pyplot as plt
import numpy as np

page = pathlib.Path('docs/guides/your_transformer.md').read_text()
guide: dict = {}
exec(re.search(r'```python\n(.*?)```', page, re.S).group(1), guide)  # pylint: disable=exec-used
aj, model, x_test, y_test, flops = (guide[k] for k in ('aj', 'model', 'x_test', 'y_test', 'flops'))

results = [aj.early_exit(model, x_test, threshold=t) for t in np.linspace(0.2, 1.0, 9)]
cost, accuracy = zip(*sorted((float(r.flops.mean() / flops[-1]),
                               float(np.mean(r.predictions == y_test))) for r in results))
fig, axis = plt.subplots(figsize=(5, 3.2))
axis.plot(cost, accuracy, marker='o', label='early exit, thresholds 0.2 to 1.0')
axis.plot([flops[0] / flops[-1], 1.0], np.asarray(aj.exit_accuracy(
    np.stack(list(aj.iterate_exits(model, x_test))), y_test)), 's', label='exit 1, exit 2')
axis.set(xlabel='mean cost per image (fraction of exit 2)', ylabel='test accuracy')
axis.legend(fontsize=8)
fig.tight_layout()
