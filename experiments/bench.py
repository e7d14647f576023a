"""Side-by-side cost of per-exit gradients, orthogonalization and training steps.

  python -m experiments.bench [--models a,b] [--batch_size 64] [--repeats 15] [--json PATH]
  python -m experiments.bench --quick          # under a minute
  python -m experiments.bench --breakdown      # where a training step's time goes
  python -m experiments.bench --methods        # every exit-gradient combination's cost, and
                                               # each iterative one against fixed iterations

Every timing is the median over repetitions run round-robin (one of each path
in turn, so that machine noise hits them alike), reported as a ratio to the
summed-loss gradient measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import json
import pathlib
import statistics
import subprocess
import time
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

import anytime_jax as aj
from anytime_jax import (create_train_state, exit_cross_entropy, make_train_step, models,
                         staged_exit_jacobian, summed_loss_gradient)
from anytime_jax.models import conv
from experiments import data, optimizers


def floor_ratio(flops: list[float]) -> float:
  """Cost model: per-exit gradients over the summed-loss gradient.

  A backward pass costs about twice its forward pass. The summed loss needs
  one forward and one backward over every stage; per-exit gradients need one
  forward, and per stage s one backward for each exit >= s.
  """
  per_stage = np.diff([0.0, *flops])
  num_exits = len(flops)
  total = per_stage.sum()
  per_exit = total + 2 * sum(f * (num_exits - s) for s, f in enumerate(per_stage))
  return float(per_exit / (3 * total))


def _block(tree):
  return jax.tree.map(lambda a: a.block_until_ready(), tree)


def _time_round_robin(fns: dict, repeats: int) -> dict:
  """Median seconds per call of each zero-argument function, interleaved."""
  for fn in fns.values():  # compile and warm up
    _block(fn())
    _block(fn())
  times: dict[str, list[float]] = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      _block(fn())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t) for name, t in times.items()}


def _compile(fn, *args):
  """Compiles ``fn`` for ``args``; returns it and its peak scratch memory in MiB."""
  compiled = jax.jit(fn).lower(*args).compile()
  analysis = compiled.memory_analysis()
  temp = getattr(analysis, 'temp_size_in_bytes', None) if analysis is not None else None
  return compiled, (temp / 2 ** 20 if temp is not None else float('nan'))


def _example(name: str, batch_size: int, shape, width, conv_weight_gradient='xla'):
  network = models.create(name, num_classes=10, width=width,
                          conv_weight_gradient=conv_weight_gradient)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch_size, *shape)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch_size))
  return network, x, y, models.init_variables(network, jax.random.key(0), x)


def _gradient_row(name, batch_size, num_params, paths, flops, ortho_update, steps, repeats, args):
  """Times the gradient paths (functions of ``args``) and steps side by side; returns a row."""
  compiled = {k: _compile(f, args) for k, f in paths.items()}
  jac = compiled['staged'][0](args)[0]
  timings = _time_round_robin({
      **{k: (lambda f=f: f(args)) for k, (f, _) in compiled.items()},
      'orthogonalize': lambda: ortho_update(jac),
      **steps,
  }, repeats)
  base = timings['summed_grad']
  return {
      'model': name, 'batch_size': batch_size, 'params': int(num_params),
      'exit_mflops': [f / 1e6 for f in flops],
      'seconds': timings,
      'ratio': {
          'exit_jacobian': timings['exit_jacobian'] / base,
          'staged': timings['staged'] / base,
          'staged_vmap': timings['staged_vmap'] / base,
          'floor': floor_ratio(flops),
          'orthogonalize_over_staged': timings['orthogonalize'] / timings['staged'],
          'osgd_step_over_sgd_step': timings['osgd_step'] / timings['sgd_step'],
      },
      'peak_mib': {k: mib for k, (_, mib) in compiled.items()},
  }


def bench_model(name: str, batch_size: int, repeats: int, shape=(28, 28, 1), width=None,
                conv_weight_gradient='xla') -> dict:
  network, x, y, variables = _example(name, batch_size, shape, width, conv_weight_gradient)
  paths = {
      'summed_grad': lambda v: summed_loss_gradient(network, v, x, y),
      'exit_jacobian': lambda v: aj.vmapped_gradients().gradients(network, v, x, y, None),
      'staged': lambda v: staged_exit_jacobian(network, v, x, y),
      'staged_vmap': lambda v: staged_exit_jacobian(network, v, x, y, vectorize=True),
  }
  ortho = aj.orthogonalize()
  osgd_tx, sgd_tx = aj.osgd(0.1), optax.sgd(0.1, momentum=0.9)
  osgd_step = jax.jit(make_train_step(network, osgd_tx))
  sgd_step = jax.jit(make_train_step(network, sgd_tx, gradients=aj.summed_gradients()))
  osgd_state = create_train_state(network, osgd_tx, jax.random.key(0), x)
  sgd_state = create_train_state(network, sgd_tx, jax.random.key(0), x)
  return _gradient_row(
      name, batch_size, sum(p.size for p in jax.tree.leaves(variables['params'])), paths,
      aj.exit_flops(network, variables, x),
      jax.jit(lambda j: ortho.update(j, ortho.init(None))[0]),
      {'osgd_step': lambda: osgd_step(osgd_state, x, y),
       'sgd_step': lambda: sgd_step(sgd_state, x, y)}, repeats, variables)


def user_cnn(width: int = 16, num_exits: int = 4, num_classes: int = 10, seed: int = 0):
  """A network a user might write without Flax or our models: plain JAX stages.

  Stage k: a 3x3 convolution (stride 2 when the resolution halves, at most
  twice) with ReLU, then an exit head (global average pool, dense). Returns
  ``(stages, params)`` for :func:`anytime_jax.staged_jacobian`.
  """
  rng = np.random.default_rng(seed)
  stages, params, channels = [], [], 1
  for k in range(num_exits):
    out = width * 2 ** min(k, 2)
    stride = 2 if 0 < k <= 2 else 1

    def stage(p, state, x, stride=stride):
      h = jax.nn.relu(jax.lax.conv_general_dilated(
          x, p['conv'], (stride, stride), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')))
      return h, jnp.mean(h, axis=(1, 2)) @ p['head'], state

    params.append({'conv': jnp.asarray(rng.normal(size=(3, 3, channels, out))
                                       * np.sqrt(2 / (9 * channels)), jnp.float32),
                   'head': jnp.asarray(rng.normal(size=(out, num_classes)) / np.sqrt(out),
                                       jnp.float32)})
    stages.append(stage)
    channels = out
  return stages, params


def bench_user_network(batch_size: int, repeats: int, shape=(28, 28, 1)) -> dict:
  """The generic engine on :func:`user_cnn`, measured like our models."""
  stages, params = user_cnn()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch_size, *shape)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch_size))
  exit_loss = lambda k, logits: exit_cross_entropy(logits[None], y)[0]

  def losses(p):
    carry, out = x, []
    for stage, stage_params in zip(stages, p):
      carry, logits, _ = stage(stage_params, None, carry)
      out.append(logits)
    return exit_cross_entropy(jnp.stack(out), y)

  paths = {
      'summed_grad': lambda p: jax.grad(lambda p: jnp.sum(losses(p)))(p),
      'exit_jacobian': lambda p: aj.exit_jacobian(losses, p),
      'staged': lambda p: aj.staged_jacobian(stages, p, x, exit_loss),
      'staged_vmap': lambda p: aj.staged_jacobian(stages, p, x, exit_loss, vectorize=True),
  }
  flops, carry, total = [], jax.ShapeDtypeStruct(x.shape, x.dtype), 0.0
  for stage, stage_params in zip(stages, params):
    total += float(jax.jit(lambda p, c, s=stage: s(p, None, c)).lower(
        stage_params, carry).cost_analysis()['flops']) / batch_size  # type: ignore[index]
    flops.append(total)
    carry = jax.eval_shape(lambda p, c, s=stage: s(p, None, c)[0], stage_params, carry)
  ortho = aj.orthogonalize()
  osgd_tx, sgd_tx = aj.osgd(0.1), optax.sgd(0.1, momentum=0.9)

  @jax.jit
  def osgd_step(p, state):
    jac, _, _ = aj.staged_jacobian(stages, p, x, exit_loss)
    updates, state = osgd_tx.update(jac, state, p)
    return optax.apply_updates(p, updates), state

  @jax.jit
  def sgd_step(p, state):
    updates, state = sgd_tx.update(jax.grad(lambda p: jnp.sum(losses(p)))(p), state, p)
    return optax.apply_updates(p, updates), state

  osgd_state, sgd_state = osgd_tx.init(params), sgd_tx.init(params)
  return _gradient_row(
      'user_cnn (plain JAX stages)', batch_size, sum(p.size for p in jax.tree.leaves(params)),
      paths, flops, jax.jit(lambda j: ortho.update(j, ortho.init(None))[0]),
      {'osgd_step': lambda: osgd_step(params, osgd_state),
       'sgd_step': lambda: sgd_step(params, sgd_state)}, repeats, params)


def _pipeline_seconds(batch_size: int, shape, repeats: int) -> float:
  """Seconds per batch of the training input pipeline (in-memory uint8 images, shuffle, normalize)."""
  rng = np.random.default_rng(0)
  split = data.Split(rng.integers(0, 256, (8 * batch_size, *shape), dtype=np.uint8),
                     rng.integers(0, 10, 8 * batch_size).astype(np.int32))
  dataset = data.Dataset('synthetic', split, split, 10, np.zeros(shape[-1], np.float32) + 0.5,
                         np.ones(shape[-1], np.float32))
  start = time.perf_counter()
  for epoch in range(repeats):
    for _ in data.train_batches(dataset, batch_size, seed=0, epoch=epoch):
      pass
  return (time.perf_counter() - start) / (8 * repeats)


def breakdown_model(name: str, batch_size: int, repeats: int, shape=(28, 28, 1), width=None,
                    conv_modes=conv.WEIGHT_GRADIENTS) -> dict:
  """Where one OSGD training step's time goes, for each convolution weight gradient.

  Each part is a program of its own, timed round-robin with the others; the
  parts are differences of nested programs: forward (train mode, with the
  loss), the input-gradient pass (the backward pass with the parameters held
  constant: activations, BatchNorm and input gradients of every convolution),
  the weight gradients (summed-loss gradient minus that), the per-exit extra
  of the staged engine (staged minus summed), and the optimizer with
  orthogonalization (OSGD step minus staged).
  """
  programs: dict[tuple[str, str], Callable[..., Any]] = {}
  for mode in conv_modes:
    network, x, y, variables = _example(name, batch_size, shape, width, mode)
    params = variables['params']
    rest = {c: t for c, t in variables.items() if c != 'params'}  # the ViT has no batch_stats

    def summed_loss(params, x, network=network, rest=rest, y=y):
      logits, _ = network.apply({'params': params, **rest}, x, train=True, mutable=['batch_stats'])
      return jnp.sum(exit_cross_entropy(logits, y))

    tx = aj.osgd(0.1)
    state = create_train_state(network, tx, jax.random.key(0), x)
    step = jax.jit(make_train_step(network, tx))
    for part, fn in {
        'forward': jax.jit(summed_loss),
        'input_grads': jax.jit(jax.grad(summed_loss, argnums=1)),
        'summed_grad': jax.jit(jax.grad(summed_loss)),
        'staged': jax.jit(lambda p, x, n=network, r=rest, y=y: staged_exit_jacobian(
            n, {'params': p, **r}, x, y)),
    }.items():
      programs[mode, part] = lambda fn=fn, p=params, x=x: fn(p, x)
    programs[mode, 'osgd_step'] = lambda s=step, st=state, x=x, y=y: s(st, x, y)
  t = _time_round_robin(programs, repeats)
  pipeline = _pipeline_seconds(batch_size, shape, repeats)
  parts = {}
  for mode in conv_modes:
    m = {part: t[mode, part] for (mode_, part) in t if mode_ == mode}
    parts[mode] = {
        'forward': m['forward'],
        'input_grads': m['input_grads'] - m['forward'],
        'weight_grads': m['summed_grad'] - m['input_grads'],
        'per_exit_extra': m['staged'] - m['summed_grad'],
        'optimizer': m['osgd_step'] - m['staged'],
        'step': m['osgd_step'],
    }
  return {'model': name, 'batch_size': batch_size, 'pipeline': pipeline, 'parts': parts}


# The methods whose weights come from an iterative solver (IMTL-G: its fallback), and the
# last revision before their solvers stopped on a tolerance (issue #36): --methods times each
# against its fixed-iteration self there, in the same run.
ITERATIVE = ('mgda', 'upgrad', 'dualproj', 'cagrad', 'imtl_g', 'nash_mtl', 'fairgrad')
FIXED_ITERATIONS_REVISION = '4dc87fd'


def _combinations_at(revision: str):
  """``anytime_jax.combinations`` as it was at a git revision (on today's Gram core), or None."""
  root = pathlib.Path(__file__).resolve().parent.parent
  try:
    source = subprocess.run(['git', 'show', f'{revision}:anytime_jax/combinations.py'], cwd=root,
                            capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return None
  # Its imports named the Gram core's old public path; today it is private.
  source = source.replace('from anytime_jax import gram as', 'from anytime_jax._src import gram as')
  source = source.replace('from anytime_jax.gram import', 'from anytime_jax._src.gram import')
  module = types.ModuleType(f'combinations_at_{revision}')
  exec(compile(source, f'{revision}:anytime_jax/combinations.py', 'exec'), module.__dict__)
  return module


def bench_methods(name: str, batch_size: int, repeats: int, shape=(28, 28, 1), width=None) -> dict:
  """Each combination's update on one step's per-exit gradients, against computing them, and
  each iterative one against its fixed-iteration version (``FIXED_ITERATIONS_REVISION``)."""
  network, x, y, variables = _example(name, batch_size, shape, width)
  staged = jax.jit(lambda v: staged_exit_jacobian(network, v, x, y))
  jac, losses, _ = staged(variables)
  params = variables['params']
  programs = {'per_exit_gradients': lambda: staged(variables)}
  old = _combinations_at(FIXED_ITERATIONS_REVISION)

  def program(head):
    update = jax.jit(lambda j, s: head.update(j, s, params, losses=losses)[0])
    return lambda s=head.init(params): update(jac, s)

  for method in optimizers.PER_EXIT:
    programs[method] = program(optimizers.per_exit_head(method, network.num_exits))
    if method in ITERATIVE and old is not None:
      factory, options = optimizers.PER_EXIT[method]
      programs[f'{method} (fixed)'] = program(getattr(old, factory.__name__)(
          **options, num_exits=network.num_exits, diagnostics=True))
  t = _time_round_robin(programs, repeats)
  base = t.pop('per_exit_gradients')
  return {'model': name, 'batch_size': batch_size, 'per_exit_gradients': base,
          'methods': {m: {'seconds': sec, 'over_gradients': sec / base,
                          'over_fixed': sec / t[f'{m} (fixed)'] if f'{m} (fixed)' in t else None}
                      for m, sec in t.items() if not m.endswith(' (fixed)')}}


def bench_loop(name: str, batch_size: int, steps: int, data_dir: str,
               dataset: str = 'fashion_mnist') -> dict:
  """Images per second of ``experiments.train``'s whole loop against the bare jitted step.

  The loop runs two epochs of ``steps`` steps and its second epoch is timed (the first
  compiles), reading the losses every step (``log_every=1``: what the loop did before it
  dispatched ahead) and every 50; the bare step runs on batches already on the device.
  ``dataset='mock_imagenet'`` streams 64x64 random-resized crops of variable-size JPEG
  images (written under ``data_dir`` first if missing; :mod:`experiments.mock_imagenet`),
  decoded in the loop's worker threads; the bare step gets their evaluation views.
  """
  import tempfile  # pylint: disable=g-import-not-at-top
  from experiments import mock_imagenet, train  # pylint: disable=g-import-not-at-top
  image_size = None
  if dataset == mock_imagenet.NAME:
    mock_imagenet.write(data_dir)
    image_size = 64
  loaded = data.load(dataset, data_dir, image_size=image_size)
  config = train.Config(model=name, dataset=dataset, batch_size=batch_size, epochs=2,
                        max_steps_per_epoch=steps, eval_every=0, image_size=image_size,
                        validation_size=batch_size)
  rates = {}
  for log_every in (1, 50):
    with tempfile.TemporaryDirectory() as workdir:
      train.train_and_evaluate(config, workdir, data_dir=data_dir, log_every=log_every,
                               checkpoint_every=10 ** 9)
      records = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
      rates[f'loop, losses read every {log_every}'] = json.loads(records[-1])['images_per_second']
  network = models.create(name, num_classes=loaded.num_classes, num_exits=config.num_exits,
                          **models.input_options(loaded.image_shape))
  tx, gradients = optimizers.make(config.optimizer, config, 2 * steps, steps)
  state = create_train_state(network, tx, jax.random.key(0),
                             jnp.zeros((1, *loaded.image_shape), jnp.float32))
  step = jax.jit(make_train_step(network, tx, gradients=gradients), donate_argnums=0)
  batches = [jax.device_put(b) for b in
             itertools.islice(data.train_batches(loaded, batch_size, seed=0, epoch=0), steps)]
  state, _ = _block(step(state, *batches[0]))
  start = time.perf_counter()
  for images, labels in batches:
    state, metrics = step(state, images, labels)
  _block(metrics)
  rates['bare jitted step'] = steps * batch_size / (time.perf_counter() - start)
  return {'model': name, 'dataset': dataset, 'batch_size': batch_size, 'steps': steps,
          'images_per_second': rates}


def bench_pipeline(data_dir: str, batch_size: int = 64, batches: int = 8) -> str:
  """Images per second of the streamed input pipeline alone, by number of worker threads.

  224x224 random-resized crops of generated 300-500 pixel JPEG images (600, written
  under ``data_dir`` first if missing): decoding and resampling only, no training.
  """
  from experiments import mock_imagenet  # pylint: disable=g-import-not-at-top
  mock_imagenet.write(data_dir, num_train=600, num_test=10, min_side=300, max_side=500,
                      dataset_name='mock_imagenet_large')
  split = data.load('mock_imagenet_large', data_dir, image_size=224).train
  rows = []
  for workers in (1, 2, 4, 8):
    view = dataclasses.replace(split, workers=workers)
    view.read(np.arange(batch_size), np.random.default_rng(0))  # opens files, starts threads
    start = time.perf_counter()
    for b in range(batches):
      idx = (np.arange(batch_size) + (b + 1) * batch_size) % len(view)
      view.read(idx, np.random.default_rng(b))
    rows.append([str(workers), f'{batches * batch_size / (time.perf_counter() - start):.0f}'])
  return _markdown(['worker threads', 'img/s'], rows)


def format_loop(rows: list[dict]) -> str:
  bare = lambda r: r['images_per_second']['bare jitted step']
  return _markdown(['model', 'data', 'what runs', 'img/s', 'overhead against the bare step'],
                   [[r['model'], r['dataset'], what, f'{rate:.0f}', f'{100 * (1 - rate / bare(r)):+.1f} %']
                    for r in rows for what, rate in r['images_per_second'].items()])


AMORTIZE_EVERY = (1, 4, 8, 16)
PERIOD = 16  # steps per timed call: whole periods for every N in AMORTIZE_EVERY


def bench_amortized(name: str, batch_size: int, repeats: int, shape=(28, 28, 1),
                    width=None) -> dict:
  """OSGD's step with its weights refreshed every N steps (``aj.amortize``), over SGD's step.

  Every timed call runs ``PERIOD`` steps from the same state, so each N's refreshes and weighted
  steps are averaged as training meets them; ``osgd_global`` is the unamortized method. The
  host's step count picks each step's program (``refresh=``); ``every_8_cond`` lets
  ``lax.cond`` pick on the device instead.
  """
  network, x, y, _ = _example(name, batch_size, shape, width)
  num_exits = network.num_exits

  def osgd_global():
    return aj.orthogonalize(granularity='global', diagnostics=True, num_exits=num_exits)

  def steps_of(head, every=None):
    tx = aj.sgd_tail(0.1) if head is None else optax.chain(head, aj.sgd_tail(0.1))
    gradients = aj.summed_gradients() if head is None else aj.staged_gradients()
    step = jax.jit(make_train_step(network, tx, gradients=gradients), static_argnames='refresh')
    start = create_train_state(network, tx, jax.random.key(0), x)

    def run():
      state = start
      for i in range(PERIOD):
        state, _ = step(state, x, y, **({} if every is None else {'refresh': i % every == 0}))
      return state.params
    return run

  fns = {'sgd': steps_of(None), 'osgd_global': steps_of(osgd_global())}
  for every in AMORTIZE_EVERY:
    fns[f'every_{every}'] = steps_of(aj.amortize(osgd_global(), every=every, num_exits=num_exits),
                                     every=every)
  # The same with the choice made on the device by lax.cond: one program, no host counter.
  fns['every_8_cond'] = steps_of(aj.amortize(osgd_global(), every=8, num_exits=num_exits))
  seconds = _time_round_robin(fns, repeats)
  return {'model': name, 'batch_size': batch_size,
          'step_seconds': {k: t / PERIOD for k, t in seconds.items()},
          'ratio': {k: t / seconds['sgd'] for k, t in seconds.items() if k != 'sgd'}}


def format_amortized(rows: list[dict]) -> str:
  header = ['model', 'SGD step ms', 'OSGD global / SGD',
            *[f'refresh every {n} / SGD' for n in AMORTIZE_EVERY], 'every 8 by lax.cond / SGD']
  return _markdown(header, [[r['model'], f"{1e3 * r['step_seconds']['sgd']:.1f}",
                             f"{r['ratio']['osgd_global']:.2f}x",
                             *[f"{r['ratio'][f'every_{n}']:.2f}x" for n in AMORTIZE_EVERY],
                             f"{r['ratio']['every_8_cond']:.2f}x"]
                            for r in rows])


def _markdown(header: list[str], rows: list[list[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in rows])


def format_methods(rows: list[dict]) -> str:
  cells = []
  for r in rows:
    cells.append([r['model'], '(per-exit gradients)', f"{1e3 * r['per_exit_gradients']:.1f}",
                  '100%', ''])
    cells += [[r['model'], method, f"{1e3 * m['seconds']:.2f}", f"{100 * m['over_gradients']:.1f}%",
               '' if m.get('over_fixed') is None else f"{m['over_fixed']:.2f}x"]
              for method, m in r['methods'].items()]
  return _markdown(['model', 'method', 'update ms', '/ per-exit gradients',
                    f'/ fixed iterations ({FIXED_ITERATIONS_REVISION})'], cells)


def format_breakdown(rows: list[dict]) -> str:
  header = ['model', 'conv weight gradient', 'forward ms', 'input grads ms', 'weight grads ms',
            'weight grads / forward', 'per-exit extra ms', 'optimizer ms', 'OSGD step ms',
            'img/s (step)', 'input pipeline ms']
  cells = [[r['model'], mode, f"{1e3 * p['forward']:.1f}", f"{1e3 * p['input_grads']:.1f}",
            f"{1e3 * p['weight_grads']:.1f}", f"{p['weight_grads'] / p['forward']:.2f}",
            f"{1e3 * p['per_exit_extra']:.1f}", f"{1e3 * p['optimizer']:.1f}",
            f"{1e3 * p['step']:.1f}", f"{r['batch_size'] / p['step']:.0f}",
            f"{1e3 * r['pipeline']:.2f}"]
           for r in rows for mode, p in r['parts'].items()]
  return _markdown(header, cells)


def format_table(rows: list[dict]) -> str:
  header = ['model', 'params', 'batch', 'summed grad ms', 'exit_jacobian', 'staged',
            'staged (vmap)', 'floor', 'staged/floor', 'orthogonalize / staged',
            'OSGD step / SGD step', 'peak MiB summed / exit_jacobian / staged']
  cells = []
  for r in rows:
    q, m = r['ratio'], r['peak_mib']
    cells.append([r['model'], f"{r['params']:,}", str(r['batch_size']),
                  f"{1e3 * r['seconds']['summed_grad']:.1f}", f"{q['exit_jacobian']:.2f}x",
                  f"{q['staged']:.2f}x", f"{q['staged_vmap']:.2f}x", f"{q['floor']:.2f}x",
                  f"{q['staged'] / q['floor']:.2f}", f"{100 * q['orthogonalize_over_staged']:.1f}%",
                  f"{q['osgd_step_over_sgd_step']:.2f}x",
                  f"{m['summed_grad']:.0f} / {m['exit_jacobian']:.0f} / {m['staged']:.0f}"])
  return _markdown(header, cells)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default=','.join(models.ARCHITECTURES))
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=15)
  parser.add_argument('--width', type=int, default=None, help='override every model\'s width')
  parser.add_argument('--json', default=None, help='also write the results here')
  parser.add_argument('--quick', action='store_true', help='branched only, batch 8, two repeats')
  parser.add_argument('--conv_weight_gradient', default='xla', choices=conv.WEIGHT_GRADIENTS,
                      help='how convolutions compute their weight gradient')
  parser.add_argument('--breakdown', action='store_true',
                      help='where an OSGD step\'s time goes, for every conv weight gradient')
  parser.add_argument('--user_network', action='store_true',
                      help='also a network written as plain JAX stages (the generic engine)')
  parser.add_argument('--methods', action='store_true',
                      help='the cost of every exit-gradient combination\'s update')
  parser.add_argument('--amortized', action='store_true',
                      help="OSGD's step with its weights refreshed every N steps, over SGD's")
  parser.add_argument('--loop', action='store_true',
                      help='images per second of experiments.train\'s loop against the bare step')
  parser.add_argument('--steps', type=int, default=60, help='--loop: steps per timed epoch')
  parser.add_argument('--data_dir', default=data.DEFAULT_DATA_DIR, help='--loop: prepared data')
  parser.add_argument('--pipeline', action='store_true',
                      help='img/s of the streamed input pipeline alone, by worker threads')
  parser.add_argument('--loop_dataset', default='fashion_mnist',
                      choices=('fashion_mnist', 'digits', 'mock_imagenet'),
                      help='--loop: in-memory Fashion-MNIST or digits, or streamed 64x64 crops '
                      'of generated JPEG images')
  args = parser.parse_args(argv)
  if args.pipeline:
    print(f'{os.cpu_count()} CPUs; batches of 64 224x224 random-resized crops')
    print(bench_pipeline(args.data_dir))
    return
  names = args.models.split(',')
  if args.quick:
    names, args.batch_size, args.repeats = ['branched'], 8, 2
  for name in names:
    if name not in models.ARCHITECTURES:
      parser.error(f'unknown model {name!r}; choose from {", ".join(models.ARCHITECTURES)}')
  print(f'{jax.devices()[0].platform} x{jax.device_count()}, jax {jax.__version__}; '
        f'batch {args.batch_size}; ' + (
            f'{args.steps} timed steps per row, compared in the same run' if args.loop else
            f'median of {args.repeats}; ratios to ' + (
                "SGD's step" if args.amortized else 'the summed-loss gradient') +
            ' in the same run'),
        flush=True)
  if args.loop:
    measure = lambda name: bench_loop(name, args.batch_size, args.steps, args.data_dir,
                                      args.loop_dataset)
    fmt, rows_per_model = format_loop, 3
  elif args.methods:
    measure = lambda name: bench_methods(name, args.batch_size, args.repeats, width=args.width)
    fmt, rows_per_model = format_methods, 1 + len(optimizers.PER_EXIT)
  elif args.amortized:
    measure = lambda name: bench_amortized(name, args.batch_size, args.repeats, width=args.width)
    fmt, rows_per_model = format_amortized, 1
  elif args.breakdown:
    measure = lambda name: breakdown_model(name, args.batch_size, args.repeats, width=args.width)
    fmt, rows_per_model = format_breakdown, len(conv.WEIGHT_GRADIENTS)
  else:
    measure = lambda name: bench_model(name, args.batch_size, args.repeats, width=args.width,
                                       conv_weight_gradient=args.conv_weight_gradient)
    fmt, rows_per_model = format_table, 1
  rows = []
  measurements = [lambda name=name: measure(name) for name in names]
  if args.user_network and fmt is format_table:
    measurements.append(lambda: bench_user_network(args.batch_size, args.repeats))
  for measurement in measurements:
    rows.append(measurement())
    table = fmt(rows[-1:]).splitlines()
    print('\n'.join(table if len(rows) == 1 else table[-rows_per_model:]), flush=True)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump({'device': jax.devices()[0].platform, 'rows': rows}, f, indent=1)


if __name__ == '__main__':
  main()
