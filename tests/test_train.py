"""experiments.train end to end: outputs, kill and resume, the mesh, and every bad input."""

import dataclasses
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import anytime_jax as aj
from anytime_jax import models
from experiments import data
from experiments import checkpoint, mock_imagenet, optimizers, train

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = ['--dataset', 'digits', '--batch_size', '32', '--max_steps_per_epoch', '20',
         '--learning_rate', '0.2', '--num_exits', '3',
         '--epochs', '2', '--width', '4']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp('tfds')
  data.prepare('digits', str(path))
  return str(path)


def _train(args, env=None, check=True):
  out = subprocess.run([sys.executable, '-m', 'experiments.train', *args], capture_output=True,
                       text=True, cwd=ROOT, timeout=600, env=env)
  if check:
    assert out.returncode == 0, out.stderr[-4000:]
  return out


def test_end_to_end_on_digits(tmp_path, data_dir):
  workdir = tmp_path / 'run'
  out = _train([*SMALL, '--workdir', str(workdir), '--data_dir', data_dir])
  assert '| exit | MFLOPs | params | test accuracy |' in out.stdout
  assert 'img/s' in out.stderr and 'epoch 2/2' in out.stderr
  results = json.loads((workdir / 'results.json').read_text())
  assert [e['exit'] for e in results['exits']] == [1, 2, 3]
  flops = [e['flops'] for e in results['exits']]
  assert flops == sorted(flops)
  assert results['exits'][-1]['test_accuracy'] > 0.3  # chance is 0.1
  assert results['budgeted_batch'] and results['images_per_second'] > 0
  metrics = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [m['epoch'] for m in metrics] == [1, 2]
  assert all(len(m['validation_accuracy']) == 3 for m in metrics)  # --eval_every 1
  assert (workdir / 'accuracy_vs_flops.png').stat().st_size > 1000


@pytest.mark.slow
def test_train_and_evaluate_takes_a_config_and_a_workdir(tmp_path, data_dir):
  config = train.Config(dataset='digits', batch_size=32, epochs=2, num_exits=2, train_size=100,
                        eval_every=0, learning_rate=0.1, width=4)
  results = train.train_and_evaluate(config, tmp_path / 'run', data_dir=data_dir)
  assert results == json.loads((tmp_path / 'run' / 'results.json').read_text())
  metrics = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert [m['step'] for m in metrics] == [3, 6]  # 100 images: 3 batches of 32 per epoch
  assert 'validation_accuracy' not in metrics[0]  # --eval_every 0: only at the end
  assert metrics[1]['validation_accuracy'] == [e['validation_accuracy'] for e in results['exits']]
  diverging = dataclasses.replace(config, learning_rate=1e30, epochs=1)
  with pytest.raises(train.Diverged) as e:
    train.train_and_evaluate(diverging, tmp_path / 'nan', data_dir=data_dir)
  assert e.value.step >= 1 and 'the loss became' in str(e.value)


def _is_key(leaf) -> bool:
  return jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _changed(leaf):
  """Another value of the same type, shape and dtype."""
  if _is_key(leaf):
    return jax.random.fold_in(leaf, 7)
  if leaf.dtype == bool:
    return ~leaf
  return leaf + 1 + jnp.arange(leaf.size, dtype=leaf.dtype).reshape(leaf.shape)


def test_every_optimizers_state_comes_back_from_a_checkpoint_as_saved(tmp_path):
  # A resumed run continues exactly only if the whole state returns: random keys (PCGrad,
  # GradVac), running losses and weights (AdaLoss, DWA, FAMO), learnt scales (uncertainty),
  # diagnostics, their NamedTuple types.
  config = train.Config(num_exits=3)
  params = {'conv': jnp.ones((2, 3)), 'head': {'bias': jnp.ones(4)}}
  fresh = {name: optimizers.make(name, config, 100, 10)[0].init(params)
           for name in optimizers.OPTIMIZERS}
  saved = jax.tree.map(_changed, fresh)
  manager = checkpoint.Manager(tmp_path / 'checkpoints')
  manager.save(1, saved)
  restored = manager.restore(1, fresh)
  assert jax.tree.structure(restored) == jax.tree.structure(saved)
  unwrap = lambda x: jax.random.key_data(x) if _is_key(x) else x
  for (path, a), b, template in zip(jax.tree.leaves_with_path(saved), jax.tree.leaves(restored),
                                   jax.tree.leaves(fresh)):
    assert a.dtype == b.dtype, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(unwrap(b), unwrap(a), err_msg=jax.tree_util.keystr(path))
    assert not np.array_equal(unwrap(template), unwrap(a))  # the check could fail


@pytest.mark.slow
def test_kill_during_a_save_and_resume_gives_the_same_results(tmp_path, data_dir):
  # PCGrad carries optimizer state (its random key); every optimizer's state round-trips
  # through a checkpoint in the test above.
  common = [*SMALL, '--checkpoint_every', '10',
            '--data_dir', data_dir, '--seed', '3', '--optimizer', 'pcgrad']
  _train([*common, '--workdir', str(tmp_path / 'straight')])
  workdir = tmp_path / 'killed'
  proc = subprocess.Popen([sys.executable, '-m', 'experiments.train', *common, '--workdir',
                           str(workdir)], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    # Kill as soon as the first save has begun: orbax writes to a temporary folder first.
    ckpt = workdir / 'checkpoints'
    if ckpt.exists() and any(ckpt.iterdir()):
      break
    time.sleep(0.005)
  assert proc.poll() is None, 'the run finished before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not (workdir / 'results.json').exists()
  resumed = _train([*common, '--workdir', str(workdir)])
  straight = json.loads((tmp_path / 'straight' / 'results.json').read_text())
  again = json.loads((workdir / 'results.json').read_text())
  assert [e['test_accuracy'] for e in again['exits']] == [e['test_accuracy'] for e in straight['exits']]
  metrics = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [m['epoch'] for m in metrics] == [1, 2]
  assert resumed.returncode == 0


@pytest.mark.slow
def test_divergence_keeps_only_good_states_and_a_new_run_starts_from_them(tmp_path, data_dir):
  workdir = tmp_path / 'nan'
  args = [*SMALL, '--checkpoint_every', '1', '--data_dir', data_dir]
  out = _train([*args, '--learning_rate', '3e38', '--workdir', str(workdir)], check=False)
  assert out.returncode != 0 and not (workdir / 'results.json').exists()
  diverged_at = int(re.search(r'the loss became nan at step (\d+)', out.stderr).group(1))
  kept = int(re.search(r'the last good checkpoint is step (\d+)', out.stderr).group(1))
  assert kept == diverged_at - 2  # the state after step - 1 produced the NaN loss
  assert checkpoint.Manager(workdir / 'checkpoints').steps()[-1] == kept
  # The kept state's own loss is finite: evaluate it on a training batch.
  config, _ = train.parse_args([*args, '--learning_rate', '3e38'])
  dataset = data.load('digits', data_dir)
  network = models.create('nested_width', num_classes=10, num_exits=3)
  tx, _ = optimizers.make(config.optimizer, config, 40, 20)
  template = aj.create_train_state(network, tx, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
  state = checkpoint.Manager(workdir / 'checkpoints').restore(kept, template)
  images, labels = next(data.train_batches(dataset, 32, seed=0, epoch=0))
  logits = network.apply({'params': state.params, 'batch_stats': state.batch_stats}, images)
  assert np.all(np.isfinite(aj.exit_cross_entropy(logits, labels)))
  # A new run with a lower rate starts from it.
  again = _train([*args, '--learning_rate', '0.05', '--init_from', str(workdir), '--workdir',
                  str(tmp_path / 'lower')])
  assert f'starting from step {kept}' in again.stderr


@pytest.mark.slow
def test_a_damaged_latest_checkpoint_is_skipped_and_said(tmp_path, data_dir):
  workdir = tmp_path / 'run'
  args = [*SMALL, '--epochs', '1', '--checkpoint_every', '5', '--data_dir', data_dir,
          '--workdir', str(workdir)]
  straight = _train([*args, '--max_steps_per_epoch', '10'])
  assert straight.returncode == 0
  manager = checkpoint.Manager(workdir / 'checkpoints')
  assert manager.steps() == [5, 10]
  for f in (workdir / 'checkpoints' / '10').rglob('*'):  # truncate every file of the latest
    if f.is_file():
      f.write_bytes(f.read_bytes()[:7])
  (workdir / 'results.json').unlink()
  resumed = _train([*args, '--max_steps_per_epoch', '10'])
  assert 'checkpoint 10' in resumed.stderr and 'unreadable' in resumed.stderr
  assert 'resuming from step 5' in resumed.stderr
  assert json.loads((workdir / 'results.json').read_text())['exits']


@pytest.mark.parametrize('flag,value,expected', [
    ('--model', 'resnet', 'valid values: branched, nested_width'),
    ('--optimizer', 'adam', 'valid values: osgd'),
    ('--image_size', '4', '--image_size must be at least 8'),
    ('--epochs', '0', '--epochs must be a positive integer'),
    ('--batch_size', '-3', '--batch_size must be a positive integer'),
    ('--learning_rate', '-1', '--learning_rate must be positive'),
    ('--dropout', '0.1', '--dropout is an option of --model vit, not of nested_width'),
])
def test_bad_flags_are_rejected_with_the_valid_values(flag, value, expected):
  with pytest.raises(SystemExit) as e:
    train.parse_args([flag, value])
  assert expected in str(e.value.code)


@pytest.mark.parametrize('fields, expected', [
    (dict(optimizer='adam'), 'invalid --optimizer'),
    (dict(epochs=0), '--epochs must be a positive integer'),
    (dict(train_size=0), '--train_size must be a positive integer'),
    (dict(dropout=0.1), '--dropout is an option of --model vit'),
    (dict(eval_every=-1), '--eval_every must be 0 or positive'),
    (dict(dtype='float16'), 'invalid --dtype'),
])
def test_a_config_built_in_code_validates_itself(fields, expected):
  with pytest.raises(ValueError, match=expected):
    train.Config(**fields)


@pytest.mark.slow
def test_trains_with_amortized_weights(tmp_path, data_dir):
  out = _train([*SMALL, '--optimizer', 'osgd_global', '--refresh_every', '4', '--epochs', '1',
                '--data_dir', data_dir, '--workdir', str(tmp_path)])
  exits = json.loads((tmp_path / 'results.json').read_text())['exits']
  assert len(exits) == 3 and 'negative weight' in out.stdout + out.stderr


def test_refresh_every_needs_a_global_combination(tmp_path, data_dir):
  with pytest.raises(SystemExit, match='--refresh_every needs a global combination'):
    train.main([*SMALL, '--optimizer', 'osgd', '--refresh_every', '4', '--data_dir', data_dir,
                '--workdir', str(tmp_path)])
  with pytest.raises(SystemExit, match='--refresh_every must be a positive integer'):
    train.parse_args(['--refresh_every', '0'])


def test_dropout_needs_a_rate_below_one():
  with pytest.raises(SystemExit, match=r'--dropout must be in \[0, 1\)'):
    train.parse_args(['--model', 'vit', '--dropout', '1.0'])
  assert train.parse_args(['--model', 'vit', '--dropout', '0.1'])[0].dropout == 0.1


def test_missing_dataset_message(tmp_path):
  with pytest.raises(SystemExit) as e:
    train.main(['--dataset', 'cifar10', '--source_dir', str(tmp_path), '--data_dir',
                str(tmp_path / 'tfds'), '--workdir', str(tmp_path / 'run')])
  assert 'cifar-10-python.tar.gz' in str(e.value.code) and 'To get it' in str(e.value.code)


def test_resuming_with_another_config_is_refused(tmp_path, data_dir):
  workdir = tmp_path / 'run'
  workdir.mkdir()
  config, _ = train.parse_args([*SMALL, '--epochs', '1'])
  checkpoint.check_config(workdir, dataclasses.asdict(config))  # what a first run leaves
  with pytest.raises(SystemExit) as e:
    train.main([*SMALL, '--epochs', '3', '--workdir', str(workdir), '--data_dir', data_dir])
  assert 'another configuration' in str(e.value.code) and 'epochs' in str(e.value.code)


MESH_SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import anytime_jax as aj
    from anytime_jax import models
    assert jax.device_count() == 8
    network = models.create('nested_depth', num_classes=10, num_exits=3, width=4)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 10, 16))
    tx = aj.osgd(0.1, weight_decay=1e-3)
    state = aj.create_train_state(network, tx, jax.random.key(0), x)
    step = jax.jit(aj.make_train_step(network, tx))
    single, _ = step(state, x, y)
    mesh = Mesh(np.array(jax.devices()), ('data',))
    batch = NamedSharding(mesh, P('data'))
    sharded, _ = step(jax.device_put(state, NamedSharding(mesh, P())),
                      jax.device_put(x, batch), jax.device_put(y, batch))
    for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(sharded.params)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    print('ok')
''')


def _eight_devices():
  return dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
              JAX_PLATFORMS='cpu')


@pytest.mark.slow
def test_one_step_on_a_mesh_of_8_devices_equals_one_device():
  out = subprocess.run([sys.executable, '-c', MESH_SCRIPT], capture_output=True, text=True,
                       cwd=ROOT, env=_eight_devices(), timeout=600)
  assert out.returncode == 0 and 'ok' in out.stdout, out.stderr[-3000:]


@pytest.mark.slow
def test_train_on_8_devices_and_batch_that_does_not_divide(tmp_path, data_dir):
  env = _eight_devices()
  bad = _train([*SMALL, '--batch_size', '12', '--workdir', str(tmp_path / 'bad'),
                '--data_dir', data_dir], env=env, check=False)
  assert bad.returncode != 0 and 'does not divide over 8 devices' in bad.stderr
  _train([*SMALL, '--epochs', '1', '--max_steps_per_epoch', '3', '--workdir',
          str(tmp_path / 'ok'), '--data_dir', data_dir], env=env)


@pytest.mark.skipif(not os.path.isdir(data.DEBIAN_FASHION_MNIST),
                    reason='needs the Debian package dataset-fashion-mnist (.ci/run installs it)')
@pytest.mark.slow
def test_end_to_end_on_fashion_mnist(tmp_path):
  out = _train(['--epochs', '1', '--max_steps_per_epoch', '60', '--batch_size', '64',
                '--learning_rate', '0.2', '--num_exits', '3',
                '--workdir', str(tmp_path / 'run'), '--data_dir', str(tmp_path / 'tfds')])
  results = json.loads((tmp_path / 'run' / 'results.json').read_text())
  assert results['config']['dataset'] == 'fashion_mnist'
  assert max(e['test_accuracy'] for e in results['exits']) > 0.3, out.stdout  # chance: 0.1


def test_validation_is_held_out_of_training_and_train_size_takes_from_the_rest():
  n = 200
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)  # every image unique
  split = data.Split(images, np.arange(n, dtype=np.int32) % 10)
  dataset = data.Dataset('toy', split, split, 10, np.zeros(1, np.float32), np.ones(1, np.float32))
  train_part, validation = train.split_validation(dataset, 15, seed=3)
  ids = lambda s: set(s.images.ravel().tolist())
  assert len(validation) == 15 and len(train_part.train) == 185
  assert not ids(validation) & ids(train_part.train)
  small, same_validation = train.split_validation(dataset, 15, seed=3, train_size=50)
  assert len(small.train) == 50 and ids(small.train) <= ids(train_part.train)
  assert ids(same_validation) == ids(validation)  # train_size never moves the validation split
  assert ids(train.split_validation(dataset, 15, seed=4)[1]) != ids(validation)


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@pytest.fixture
def jpegs(write_jpegs):
  return write_jpegs(200, 40)


@pytest.mark.slow
@pytest.mark.parametrize('streamed', [False, True])
def test_two_processes_train_and_evaluate_like_one(tmp_path, data_dir, streamed, request):
  # Few steps: each one all-reduces across the processes, slowly on CPU.
  common = [*SMALL, '--data_dir', data_dir, '--seed', '1', '--max_steps_per_epoch', '5']
  if streamed:
    # Variable-size JPEG images, streamed; their evaluation views (no augmentation) make the
    # two processes' batches those of the one process.
    common = [*SMALL, '--dataset', mock_imagenet.NAME, '--data_dir', request.getfixturevalue(
        'jpegs'), '--image_size', '16', '--no-augment', '--max_steps_per_epoch', '8', '--seed', '1']
  # One process with two devices: the same global batch over the same two shards.
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=2',
             JAX_PLATFORMS='cpu')
  _train([*common, '--workdir', str(tmp_path / 'one')], env=env)
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, '-m', 'experiments.train', *common, '--workdir', str(tmp_path / 'two'),
       '--distributed', '--coordinator_address', f'127.0.0.1:{port}', '--num_processes', '2',
       '--process_id', str(i)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True, env=dict(os.environ, JAX_PLATFORMS='cpu')) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-4000:]
  one = json.loads((tmp_path / 'one' / 'results.json').read_text())
  two = json.loads((tmp_path / 'two' / 'results.json').read_text())
  for key in ('test_accuracy', 'validation_accuracy'):
    assert [e[key] for e in two['exits']] == [e[key] for e in one['exits']]
  metrics = (tmp_path / 'two' / 'metrics.jsonl').read_text().splitlines()
  assert len(metrics) == 2  # written once, by process 0
  assert all('| exit |' in out for out, _ in outs)  # every process prints the table


def test_steps_between_log_points_never_read_the_device(tmp_path, data_dir, monkeypatch):
  # On an accelerator the loop's transfer guard makes a stray read an error; on the CPU JAX's
  # arrays live in host memory and the guard is inert, so count the loop's reads instead.
  reads = []
  real = jax.device_get
  monkeypatch.setattr(jax, 'device_get', lambda tree: reads.append(len(tree)) or real(tree))
  # SMALL's run (test_end_to_end_on_digits): its compiled programs are in the cache by now.
  config = train.Config(dataset='digits', batch_size=32, epochs=2, num_exits=3, width=4,
                        learning_rate=0.2, max_steps_per_epoch=20)
  train.train_and_evaluate(config, tmp_path / 'run', data_dir=data_dir, log_every=8,
                           checkpoint_every=100)
  assert reads == [8, 8, 4, 4, 8, 8]  # 20 steps an epoch: at 8, 16, 20, then 24, 32, 40
  metrics = [json.loads(l) for l in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert [m['step'] for m in metrics] == [20, 40] and all(m['train_exit_losses'] for m in metrics)


@pytest.mark.slow
def test_bfloat16_trains_like_float32_and_a_profile_is_written(tmp_path, data_dir):
  config = train.Config(dataset='digits', batch_size=32, epochs=3, num_exits=2, eval_every=0,
                        learning_rate=0.1, width=4)
  full = train.train_and_evaluate(config, tmp_path / 'f32', data_dir=data_dir)
  half = train.train_and_evaluate(dataclasses.replace(config, dtype='bfloat16'),
                                  tmp_path / 'bf16', data_dir=data_dir, profile_steps=(2, 4))
  for f, h in zip(full['exits'], half['exits']):
    assert abs(f['test_accuracy'] - h['test_accuracy']) <= 0.05, (f, h)  # the stated margin
  assert list((tmp_path / 'bf16' / 'profile').rglob('*.xplane.pb'))


def test_gradient_equilibrium_and_distillation_turn_the_baseline_per_exit():
  config = train.Config(num_exits=2, learning_rate=1.0, warmup_epochs=0.0, weight_decay=0.0,
                        momentum=0.0, gradient_equilibrium=True)
  tx, gradients = optimizers.make('sgd', config, total_steps=10, steps_per_epoch=5)
  assert gradients.per_exit
  params = {'trunk': jnp.zeros(1), 'head': jnp.zeros(1)}
  jac = {'trunk': jnp.array([[2.0], [4.0]]), 'head': jnp.array([[0.0], [6.0]])}
  updates, _ = tx.update(jac, tx.init(params), params, losses=jnp.ones(2))
  np.testing.assert_allclose(updates['trunk'], [-3.0])  # the mean of the two exits reaching it
  np.testing.assert_allclose(updates['head'], [-6.0])
  _, gradients = optimizers.make('sgd', dataclasses.replace(config, gradient_equilibrium=False,
                                                             distillation=0.5), 10, 5)
  assert gradients.per_exit and gradients.weighted is None  # distilled: not a weighted sum
  assert not optimizers.make('sgd', train.Config(), 10, 5)[1].per_exit


@pytest.mark.slow
def test_a_run_with_gradient_equilibrium_and_distillation(tmp_path, data_dir):
  config = train.Config(dataset='digits', model='branched', batch_size=32, epochs=3, num_exits=3,
                        train_size=600, eval_every=0, learning_rate=0.2, width=4,
                        optimizer='osgd', gradient_equilibrium=True, distillation=0.5)
  results = train.train_and_evaluate(config, tmp_path / 'run', data_dir=data_dir)
  saved = json.loads((tmp_path / 'run' / 'config.json').read_text())
  assert saved['gradient_equilibrium'] and saved['distillation'] == 0.5
  assert results['exits'][-1]['test_accuracy'] > 0.3  # chance is 0.1


def test_osgd_means_the_librarys_osgd_and_old_names_warn_until_they_go():
  head, options = optimizers.PER_EXIT['osgd']
  assert head is aj.orthogonalize and options == {}  # aj.orthogonalize()'s defaults
  assert optimizers.PER_EXIT['osgd_leaf'][1] == {'granularity': 'leaf'}
  for old, new in optimizers.RENAMED.items():
    with pytest.warns(DeprecationWarning, match=f'--optimizer {old} is now {new}'):
      assert train.Config(optimizer=old).optimizer == new
  registered = {factory for factory, _ in optimizers.PER_EXIT.values()}
  assert {m.factory for m in aj.METHODS.values() if m.family != 'summed'} <= registered
