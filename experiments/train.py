"""Trains an anytime network and prints per-exit test accuracy.

  python -m experiments.train                       # nested_width, OSGD, Fashion-MNIST
  python -m experiments.train --model branched --optimizer sgd --epochs 10 --workdir runs/b

Resumable: run the same command again after an interruption (even kill -9) and
it continues from the last checkpoint in --workdir. Data parallel over every
device (``jax.sharding.Mesh``); multi-host with --distributed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import pathlib
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

import anytime_jax as aj
from anytime_jax import models
from experiments import checkpoint, data, optimizers, report, streaming


class Diverged(RuntimeError):
  """The loss became NaN or infinite at ``step``; the last good checkpoint is kept."""

  def __init__(self, message: str, step: int):
    super().__init__(message)
    self.step = step


DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything that determines a run's results (stored in workdir/config.json)."""
  model: str = 'nested_width'
  optimizer: str = 'osgd_global'  # the study's choice (results/study.md)
  dataset: str = 'fashion_mnist'
  epochs: int = 3
  batch_size: int = 128
  learning_rate: float = 0.4  # the study's choice for it
  momentum: float = 0.9
  weight_decay: float = 5e-4
  warmup_epochs: float = 0.5
  num_exits: int = 4
  width: Optional[int] = None
  growth: Optional[str] = None  # independent networks: 'width' (default), 'depth' or 'both'
  dropout: float = 0.0  # --model vit only
  refresh_every: int = 1  # a global combination's weights refreshed every N steps (aj.amortize)
  dtype: str = 'float32'  # computation: 'float32' or 'bfloat16' (parameters stay float32)
  gradient_equilibrium: bool = False  # Li et al. 2019, before the combination
  distillation: float = 0.0  # weight of distillation from the last exit (0: off)
  distillation_temperature: float = 4.0
  validation_size: int = 5000
  train_size: Optional[int] = None  # use only this many training examples (after validation)
  eval_every: int = 1  # epochs between validation evaluations (0: at the end only)
  init_from: Optional[str] = None  # start from another run's latest parameters and statistics
  augment: Optional[bool] = None  # default: on for CIFAR and streamed data sets
  image_size: Optional[int] = None  # streamed data sets: square side (default 224)
  max_steps_per_epoch: Optional[int] = None  # smoke runs: cut every epoch short
  seed: int = 0

  def __post_init__(self):
    """Refuses a configuration that cannot run, wherever it is built (flags, studies, code)."""
    object.__setattr__(self, 'optimizer', optimizers.current_name(self.optimizer))
    _choices('model', self.model, models.ARCHITECTURES)
    _choices('optimizer', self.optimizer, optimizers.OPTIMIZERS)
    _choices('dtype', self.dtype, tuple(DTYPES))
    if self.growth is not None:
      _choices('growth', self.growth, ('width', 'depth', 'both'))
    for name in ('epochs', 'batch_size', 'num_exits', 'refresh_every'):
      _positive(name, getattr(self, name))
    for name in ('train_size', 'width', 'max_steps_per_epoch'):
      if getattr(self, name) is not None:
        _positive(name, getattr(self, name))
    if self.image_size is not None and self.image_size < 8:
      raise ValueError(f'--image_size must be at least 8, got {self.image_size}')
    if self.dropout and self.model != 'vit':
      raise ValueError(f'--dropout is an option of --model vit, not of {self.model}')
    if not 0 <= self.dropout < 1:
      raise ValueError(f'--dropout must be in [0, 1), got {self.dropout}')
    for name in ('eval_every', 'validation_size', 'distillation', 'weight_decay', 'momentum',
                 'warmup_epochs'):
      if getattr(self, name) < 0:
        raise ValueError(f'--{name} must be 0 or positive, got {getattr(self, name)}')
    if not self.learning_rate > 0:
      raise ValueError(f'--learning_rate must be positive, got {self.learning_rate}')
    if not self.distillation_temperature > 0:
      raise ValueError(f'--distillation_temperature must be positive, got '
                       f'{self.distillation_temperature}')


def _positive(name, value):
  if not isinstance(value, int) or value < 1:
    raise ValueError(f'--{name} must be a positive integer, got {value!r}')


def _choices(name, value, valid):
  if value not in valid:
    raise ValueError(f'invalid --{name} {value!r}; valid values: {", ".join(valid)}')


def parse_args(argv=None):
  defaults = Config()
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument('--model', default=defaults.model, help=f'one of {", ".join(models.ARCHITECTURES)}')
  p.add_argument('--optimizer', default=defaults.optimizer,
                 help=f'one of {", ".join(optimizers.OPTIMIZERS)}')
  p.add_argument('--dataset', default=defaults.dataset,
                 help=f'one of {", ".join(data.DATASETS)} (read into memory), or any TFDS data '
                 'set prepared in array_record under --data_dir (streamed)')
  p.add_argument('--epochs', type=int, default=defaults.epochs)
  p.add_argument('--batch_size', type=int, default=defaults.batch_size, help='global batch')
  p.add_argument('--learning_rate', type=float, default=defaults.learning_rate,
                 help='peak of the warmup + cosine schedule')
  p.add_argument('--momentum', type=float, default=defaults.momentum)
  p.add_argument('--weight_decay', type=float, default=defaults.weight_decay)
  p.add_argument('--num_exits', type=int, default=defaults.num_exits)
  p.add_argument('--width', type=int, default=None, help='base width (default: per model)')
  p.add_argument('--dtype', default=defaults.dtype, choices=DTYPES,
                 help='computation dtype; parameters, optimizer state and Gram matrices stay '
                 'float32')
  p.add_argument('--gradient_equilibrium', action='store_true',
                 help='rescale each exit\'s gradient per parameter by 1 / the exits reaching it '
                 '(Li et al. 2019), before the combination')
  p.add_argument('--distillation', type=float, default=defaults.distillation, metavar='WEIGHT',
                 help='distil the last exit into the earlier ones with this weight (0: off)')
  p.add_argument('--distillation_temperature', type=float,
                 default=defaults.distillation_temperature)
  p.add_argument('--growth', default=None, choices=('width', 'depth', 'both'),
                 help="how the independent networks grow (--model independent; default 'width'); "
                 "--model vit: 'width' nests its streams (default: branched)")
  p.add_argument('--refresh_every', type=int, default=defaults.refresh_every, metavar='N',
                 help="refresh a global combination's weights every N steps and train on the "
                 'weighted loss between (1: every step)')
  p.add_argument('--dropout', type=float, default=defaults.dropout,
                 help='--model vit: dropout rate after the embedding, attention and MLP')
  p.add_argument('--validation_size', type=int, default=defaults.validation_size,
                 help='training examples held out to calibrate early exit (capped at 10%%)')
  p.add_argument('--train_size', type=int, default=None,
                 help='train on this many of the remaining training examples (default: all)')
  p.add_argument('--eval_every', type=int, default=defaults.eval_every,
                 help='epochs between validation accuracies in metrics.jsonl (0: at the end '
                 'only); the test split is evaluated once, at the end')
  p.add_argument('--augment', action=argparse.BooleanOptionalAction, default=None,
                 help='random crop and flip (default: on for CIFAR and streamed data sets, '
                 'which take random-resized crops)')
  p.add_argument('--image_size', type=int, default=None,
                 help='streamed data sets: side of the square training and evaluation images '
                 '(default 224)')
  p.add_argument('--data_workers', type=int, default=None,
                 help='streamed data sets: threads reading and decoding examples '
                 '(default: the CPU count, at most 8)')
  p.add_argument('--max_steps_per_epoch', type=int, default=None,
                 help='cut every epoch to this many steps (smoke runs)')
  p.add_argument('--init_from', default=None,
                 help='start from the parameters and BatchNorm statistics of the latest '
                 'checkpoint of this workdir (e.g. a diverged run, with a lower rate)')
  p.add_argument('--seed', type=int, default=defaults.seed)
  p.add_argument('--workdir', default='runs/default', help='checkpoints, metrics, results')
  p.add_argument('--data_dir', default=data.DEFAULT_DATA_DIR, help='prepared TFDS files')
  p.add_argument('--source_dir', default=None,
                 help='directory with the raw dataset files (IDX files, CIFAR archives)')
  p.add_argument('--checkpoint_every', type=int, default=200, help='steps between checkpoints')
  p.add_argument('--log_every', type=int, default=50,
                 help='steps between reads of the losses (the loop never waits for the device '
                 'in between)')
  p.add_argument('--profile_steps', default=None, metavar='FIRST:LAST',
                 help='write a jax.profiler trace of steps FIRST to LAST-1 to WORKDIR/profile')
  p.add_argument('--distributed', action='store_true',
                 help='call jax.distributed.initialize() (the cluster from the environment, or '
                 'from the next three flags)')
  p.add_argument('--coordinator_address', default=None, help='with --distributed: host:port')
  p.add_argument('--num_processes', type=int, default=None, help='with --distributed')
  p.add_argument('--process_id', type=int, default=None, help='with --distributed')
  args = p.parse_args(argv)
  for name in ('checkpoint_every', 'log_every'):
    if getattr(args, name) < 1:
      raise SystemExit(f'error: --{name} must be a positive integer, got {getattr(args, name)}')
  if args.profile_steps is not None:
    try:
      first, last = (int(v) for v in args.profile_steps.split(':'))
    except ValueError:
      raise SystemExit(f'error: --profile_steps takes FIRST:LAST, got {args.profile_steps!r}') from None
    if not 0 <= first < last:
      raise SystemExit(f'error: --profile_steps needs 0 <= FIRST < LAST, got {args.profile_steps}')
    args.profile_steps = (first, last)
  fields = {f.name for f in dataclasses.fields(Config)}
  try:
    config = Config(**{k: v for k, v in vars(args).items() if k in fields})
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  return config, args


def build_network(config: Config, dataset: data.Dataset) -> models.AnytimeNetwork:
  """The network ``config`` names, for ``dataset``'s images and classes."""
  # ImageNet-sized images get a stem and four resolution levels (the ViT has no levels).
  options = {} if config.model == 'vit' else models.input_options(dataset.image_shape)
  if config.growth is not None:
    options['growth'] = config.growth
  if config.dropout:
    options['dropout'] = config.dropout
  return models.create(config.model, num_classes=dataset.num_classes,
                       num_exits=config.num_exits, width=config.width,
                       dtype=DTYPES[config.dtype], **options)


def split_validation(dataset: data.Dataset, size: int, seed: int,
                      train_size: Optional[int] = None):
  """Holds out ``size`` training examples (fixed by the seed) as a validation split.

  With ``train_size``, training uses only that many of the other examples.
  """
  size = min(size, len(dataset.train) // 10)
  order = np.random.default_rng([seed, 12345]).permutation(len(dataset.train))
  train_order = order[size:] if train_size is None else order[size:size + train_size]
  return (dataclasses.replace(dataset, train=dataset.train.take(train_order)),
          dataset.train.take(order[:size]))


class Progress:
  """A one-line progress bar on a terminal, a line per 10% otherwise."""

  def __init__(self, total: int, prefix: str):
    self.total, self.prefix, self.start = total, prefix, time.perf_counter()
    self.tty, self.shown = sys.stderr.isatty(), -1

  def update(self, done: int, loss: float, images: int):
    rate = images / max(time.perf_counter() - self.start, 1e-9)
    tenth = 10 * done // self.total
    if not self.tty and tenth == self.shown and done != self.total:
      return
    self.shown = tenth
    bar = '#' * (20 * done // self.total)
    line = f'{self.prefix} [{bar:<20}] {done}/{self.total} loss {loss:.4f} {rate:.0f} img/s'
    print(('\r' + line) if self.tty else line, end='' if self.tty else '\n', file=sys.stderr,
          flush=True)

  def close(self):
    if self.tty:
      print(file=sys.stderr)


class Profiler:
  """A ``jax.profiler`` trace of the steps ``[first, last)``, or nothing without steps."""

  def __init__(self, directory: pathlib.Path, steps: Optional[tuple[int, int]]):
    self.directory, self.steps, self.running = directory, steps, False

  def at(self, step: int) -> None:
    """Called before each step: starts or stops the trace at its bounds."""
    if self.steps is None:
      return
    if step == self.steps[0] and not self.running:
      jax.profiler.start_trace(str(self.directory))
      self.running = True
    elif step == self.steps[1]:
      self.stop()

  def stop(self) -> None:
    if self.running:
      jax.profiler.stop_trace()
      self.running = False


def evaluate(eval_step, state, split, dataset, batch_size, shard):
  """Logits ``[K, N, C]`` and labels ``[N]`` of a whole split on every process.

  No example is dropped (N may be 0). Each process feeds its slice of every
  batch; ``eval_step`` returns the logits and labels replicated, so every
  process reads all of them without reading the split's labels itself.
  """
  logits, labels = [], []
  batches = data.eval_batches(split, dataset, batch_size, process_index=jax.process_index(),
                              process_count=jax.process_count())
  with streaming.prefetch(batches, place=lambda b: (shard(b[0]), shard(b[1]), b[2])) as ready:
    for images, batch_labels, mask in ready:
      out, batch_labels = eval_step(state, images, batch_labels)
      logits.append(np.asarray(out)[:, mask])
      labels.append(np.asarray(batch_labels)[mask])
  if not logits:
    empty = jax.eval_shape(eval_step, state, jnp.zeros((batch_size, *dataset.image_shape)),
                           jnp.zeros((batch_size,), jnp.int32))[0]
    return np.zeros((empty.shape[0], 0, empty.shape[2]), np.float32), np.zeros(0, np.int32)
  return np.concatenate(logits, axis=1), np.concatenate(labels)


def _initialized_from(state: aj.TrainState, source: pathlib.Path) -> aj.TrainState:
  """``state`` with the parameters and BatchNorm statistics of ``source``'s latest checkpoint."""
  directory = source / 'checkpoints' if (source / 'checkpoints').is_dir() else source
  manager = checkpoint.Manager(directory)
  step = manager.latest_step()
  if not step:
    raise SystemExit(f'error: --init_from {source}: no checkpoint there.')
  try:
    restored = manager.restore(step, state)
  except Exception as e:  # pylint: disable=broad-except
    raise SystemExit(f'error: --init_from {source}: checkpoint {step} does not fit this run '
                     f'(same --model, --num_exits, --width and --optimizer?): {e}') from None
  print(f'starting from step {step} of {directory}', file=sys.stderr)
  return state._replace(params=restored.params, batch_stats=restored.batch_stats)


def train_and_evaluate(config: Config, workdir: str | os.PathLike, *,
                       data_dir: str = data.DEFAULT_DATA_DIR, source_dir: Optional[str] = None,
                       checkpoint_every: int = 200, log_every: int = 50,
                       profile_steps: Optional[tuple[int, int]] = None,
                       data_workers: Optional[int] = None) -> dict:
  """Trains (or resumes) one run in ``workdir`` and returns its results.

  Args:
    config: what determines the results (stored in ``workdir/config.json``;
      resuming with another config is refused).
    workdir: checkpoints, ``metrics.jsonl``, ``results.json`` and a plot.
    data_dir: where the prepared TFDS files live.
    source_dir: a directory with the dataset's raw files.
    checkpoint_every: steps between checkpoints (also saved at every epoch end).
    log_every: steps between reads of the losses from the device (also at checkpoints and
      epoch ends): the only points where the loop waits for the device, checks for a
      diverged loss and updates the progress line.
    profile_steps: ``(first, last)``: a ``jax.profiler`` trace of steps ``first`` to
      ``last - 1``, written to ``workdir/profile`` (TensorBoard or Perfetto read it).
    data_workers: streamed data sets: threads reading and decoding examples.

  Returns:
    The dict written to ``results.json``.

  Raises:
    Diverged: the loss became NaN or infinite.
    SystemExit: a bad configuration or a dataset that cannot be found, with
      the message to show.
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  checkpoint.check_config(workdir, dataclasses.asdict(config), dataclasses.asdict(Config()))

  devices = jax.devices()
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  if config.batch_size % len(devices):
    raise SystemExit(f'error: --batch_size {config.batch_size} does not divide over '
                     f'{len(devices)} devices; use a multiple of {len(devices)}.')
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def shard(local):
    return jax.make_array_from_process_local_data(batch_sharding, local)

  try:
    dataset = data.load(config.dataset, data_dir, source_dir, image_size=config.image_size,
                        workers=data_workers)
  except (data.DatasetUnavailableError, ValueError) as e:
    raise SystemExit(f'error: {e}') from None
  dataset, validation = split_validation(dataset, config.validation_size, config.seed,
                                          config.train_size)
  augmentation = (config.augment if config.augment is not None else
                  config.dataset.startswith('cifar') or config.dataset not in data.DATASETS)
  steps_per_epoch = data.num_train_batches(dataset, config.batch_size)
  if config.max_steps_per_epoch:
    steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
  if steps_per_epoch < 1:
    raise SystemExit(f'error: --batch_size {config.batch_size} is larger than the '
                     f'{len(dataset.train)} training examples of {config.dataset}.')
  total_steps = steps_per_epoch * config.epochs

  network = build_network(config, dataset)
  try:
    tx, gradients = optimizers.make(config.optimizer, config, total_steps, steps_per_epoch)
  except ValueError as e:
    raise SystemExit(f'error: {e}') from None
  example = jnp.zeros((1, *dataset.image_shape), jnp.float32)
  state = jax.device_put(aj.create_train_state(network, tx, jax.random.key(config.seed), example),
                         replicated)
  # Apart from the initialization's key; each step folds in its number, so a resumed run repeats.
  dropout_key = jax.random.fold_in(jax.random.key(config.seed), 1) if config.dropout else None
  train_step = jax.jit(aj.make_train_step(network, tx, gradients=gradients,
                                          dropout_key=dropout_key),
                       donate_argnums=0, static_argnames='refresh')
  eval_step = jax.jit(
      lambda s, x, y: (network.apply({'params': s.params, 'batch_stats': s.batch_stats}, x), y),
      out_shardings=replicated)

  def logits_of(split) -> tuple[np.ndarray, np.ndarray]:
    return evaluate(eval_step, state, split, dataset, config.batch_size, shard)

  manager = checkpoint.Manager(workdir / 'checkpoints')
  profiler = Profiler(workdir / 'profile', profile_steps)
  state, step = manager.restore_latest(state)
  if step:
    print(f'resuming from step {step} of {total_steps} ({workdir / "checkpoints"})', file=sys.stderr)
  elif config.init_from:
    state = _initialized_from(state, pathlib.Path(config.init_from))
  report.truncate_metrics(workdir, step)
  process = (jax.process_index(), jax.process_count())

  start_epoch = step // steps_per_epoch
  val = None  # (logits, labels): the last epoch's evaluation is the final one
  for epoch in range(start_epoch, config.epochs):
    skip = step - epoch * steps_per_epoch
    progress = Progress(steps_per_epoch, f'epoch {epoch + 1}/{config.epochs}')
    epoch_start, images_seen, losses, negative = time.perf_counter(), 0, [], []
    batches = data.train_batches(dataset, config.batch_size, seed=config.seed, epoch=epoch,
                                 augmentation=augmentation, process_index=process[0],
                                 process_count=process[1], start=skip)
    pending: list[tuple[int, dict]] = []  # (step, metrics still on the device)
    # Batches are read, decoded and placed on the devices in a background thread, two ahead.
    with streaming.prefetch(batches, place=lambda b: (shard(b[0]), shard(b[1]))) as ready:
      for i, (images, labels) in enumerate(ready, start=skip):
        if i >= steps_per_epoch:
          break
        # No step waits for the device: metrics stay there until a log point reads them, so
        # the host dispatches the next steps ahead. The guard turns a stray read into an error.
        with jax.transfer_guard_device_to_host('disallow'):
          profiler.at(step)
          # Amortized weights: this loop's own count picks the program (CPUs run lax.cond slowly).
          refresh = ({} if config.refresh_every == 1 else
                     {'refresh': step % config.refresh_every == 0})
          state, metrics = train_step(state, images, labels, **refresh)
        step += 1
        images_seen += config.batch_size
        pending.append((step, metrics))
        if step % log_every and step % checkpoint_every and i + 1 < steps_per_epoch:
          continue
        for logged, values in jax.device_get(pending):
          loss = float(values['loss'])
          if not math.isfinite(loss):
            # This loss is the one of the state after logged - 1: that state and every later
            # one are bad; every earlier state had a finite loss of its own.
            progress.close()
            profiler.stop()
            kept = manager.drop_from(logged - 1)
            where = (f'the last good checkpoint is step {kept} in {workdir / "checkpoints"}: '
                     f'start from it with --init_from {workdir}' if kept else
                     'no checkpoint was good')
            raise Diverged(
                f'error: the loss became {loss} at step {logged} (epoch {epoch + 1}); stopping; '
                f'{where}. Lower --learning_rate and run again with a fresh --workdir.', logged)
          losses.append(values['exit_losses'])
          if 'negative_weight' in values:
            negative.append(float(values['negative_weight']))
        pending = []
        progress.update(i + 1, loss, images_seen)
        if step % checkpoint_every == 0:
          manager.save(step, state)
    progress.close()
    seconds = time.perf_counter() - epoch_start
    last = epoch + 1 == config.epochs
    record = {'epoch': epoch + 1, 'step': step,
              'train_exit_losses': np.mean(losses, 0).tolist() if losses else None,
              'seconds': seconds, 'images_per_second': images_seen / seconds}
    if negative:
      # How often the combination gave some exit a negative weight where that exit reaches.
      record['negative_weight_fraction'] = float(np.mean(negative))
      print(f'epoch {epoch + 1}: some exit had a negative weight in '
            f'{record["negative_weight_fraction"]:.1%} of the steps', file=sys.stderr, flush=True)
    if last or (config.eval_every and (epoch + 1) % config.eval_every == 0):
      val = logits_of(validation)
      accuracy = aj.exit_accuracy(jnp.asarray(val[0]), jnp.asarray(val[1]))
      record['validation_accuracy'] = accuracy.tolist()
      print(f'epoch {epoch + 1}: validation accuracy per exit '
            + ' '.join(f'{a:.4f}' for a in accuracy), file=sys.stderr, flush=True)
    # The epoch's record goes first: a kill before the save resumes from an earlier
    # checkpoint and drops it again, a kill after keeps both.
    report.append_metrics(workdir, record)
    manager.save(step, state)

  profiler.stop()
  flops = aj.exit_flops(network, {'params': state.params, 'batch_stats': state.batch_stats},
                        example)
  if val is None:  # resumed after the last epoch had finished
    val = logits_of(validation)
  results = report.results(config, network, state, flops, *logits_of(dataset.test), *val,
                           workdir)
  if jax.process_index() == 0:
    report.write_results(workdir, results)
    report.plot(workdir, results)
  return results


def main(argv=None):
  """Parses flags, trains, prints the per-exit table; a divergence exits with its message."""
  config, args = parse_args(argv)
  if args.distributed:
    jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
  try:
    results = train_and_evaluate(config, args.workdir, data_dir=args.data_dir,
                                 source_dir=args.source_dir,
                                 checkpoint_every=args.checkpoint_every,
                                 log_every=args.log_every, profile_steps=args.profile_steps,
                                 data_workers=args.data_workers)
  except Diverged as e:
    raise SystemExit(str(e)) from None
  print(report.table(results))
  return results


if __name__ == '__main__':
  main()
