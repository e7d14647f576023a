"""What a training run leaves in its workdir: metrics, results, a plot, a table."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import anytime_jax as aj
from experiments.checkpoint import atomic_write


def truncate_metrics(workdir: pathlib.Path, step: int) -> None:
  """Drops metrics lines from after ``step`` (a resumed run writes them again)."""
  path = workdir / 'metrics.jsonl'
  if not path.exists() or jax.process_index() != 0:
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut short by a kill
      continue
    if record['step'] <= step:
      kept.append(line)
  atomic_write(path, ''.join(line + '\n' for line in kept))


def append_metrics(workdir: pathlib.Path, record: dict) -> None:
  if jax.process_index() == 0:
    with open(workdir / 'metrics.jsonl', 'a') as f:
      f.write(json.dumps(record) + '\n')


def results(config, network, state, flops, test_logits, test_labels, val_logits, val_labels,
            workdir) -> dict:
  """The run's summary: per-exit accuracy and FLOPs, and the early-exit curve."""
  accuracy = aj.exit_accuracy(jnp.asarray(test_logits), jnp.asarray(test_labels))
  val_accuracy = (aj.exit_accuracy(jnp.asarray(val_logits), jnp.asarray(val_labels))
                  if len(val_labels) else [float('nan')] * network.num_exits)
  params, cumulative = [], 0
  for k in range(network.num_exits):
    cumulative += sum(p.size for p in jax.tree.leaves(state.params[f'stages_{k}']))
    params.append(int(cumulative))
  metrics = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines() if l]
  curve = (aj.budgeted_batch_curve(val_logits, val_labels, test_logits, test_labels, flops)
           if len(val_labels) else [])
  return {
      'config': dataclasses.asdict(config),
      'exits': [{'exit': k + 1, 'flops': flops[k], 'params': params[k],
                 'test_accuracy': float(accuracy[k]),
                 'validation_accuracy': float(val_accuracy[k])} for k in range(network.num_exits)],
      'budgeted_batch': [{k: v for k, v in p.items() if k != 'thresholds'} for p in curve],
      'train_seconds': float(sum(m['seconds'] for m in metrics)),
      'images_per_second': float(np.mean([m['images_per_second'] for m in metrics])) if metrics else None,
  }


def write_results(workdir: pathlib.Path, summary: dict) -> None:
  atomic_write(workdir / 'results.json', json.dumps(summary, indent=1))


def plot(workdir: pathlib.Path, summary: dict) -> None:
  """accuracy_vs_flops.png: one point per exit, and the early-exit curve."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  mflops = [e['flops'] / 1e6 for e in summary['exits']]
  acc = [100 * e['test_accuracy'] for e in summary['exits']]
  cfg = summary['config']
  ax.plot(mflops, acc, 'o-', label=f"{cfg['model']} + {cfg['optimizer']}: exits")
  if summary['budgeted_batch']:
    ax.plot([p['flops'] / 1e6 for p in summary['budgeted_batch']],
            [100 * p['accuracy'] for p in summary['budgeted_batch']], '--', label='early exit')
  for k, (x, y) in enumerate(zip(mflops, acc)):
    ax.annotate(str(k + 1), (x, y), textcoords='offset points', xytext=(4, -10))
  ax.set_xscale('log')
  ax.set_xlabel('MFLOPs per image (cumulative)')
  ax.set_ylabel('test accuracy (%)')
  ax.set_title(f"{cfg['dataset']}, {cfg['epochs']} epochs, seed {cfg['seed']}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  tmp = workdir / '.accuracy_vs_flops.png'
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  tmp.replace(workdir / 'accuracy_vs_flops.png')


def table(summary: dict) -> str:
  lines = ['| exit | MFLOPs | params | test accuracy |', '|---|---|---|---|']
  for e in summary['exits']:
    lines.append(f"| {e['exit']} | {e['flops'] / 1e6:.2f} | {e['params']:,} "
                 f"| {100 * e['test_accuracy']:.2f}% |")
  return '\n'.join(lines)
