"""The reproduction study's smoke mode, its resumption, and every optimizer of the trainer."""

import json
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import anytime_jax as aj
from anytime_jax import data, models
from experiments import optimizers, reproduce, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quick_study_runs_reports_and_skips_finished_runs(tmp_path):
  data.prepare('digits', str(tmp_path / 'tfds'))
  cmd = [sys.executable, '-m', 'experiments.reproduce', '--quick', '--out', str(tmp_path / 'out'),
         '--data_dir', str(tmp_path / 'tfds')]
  first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=900)
  assert first.returncode == 0, first.stderr[-3000:]
  assert '| nested_width | osgd |' in first.stdout and '| independent | sgd |' in first.stdout
  summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
  assert set(summary) == {'nested_width/sgd', 'nested_width/osgd', 'branched/sgd',
                          'branched/osgd', 'independent/sgd'}
  assert {r['learning_rate'] for r in summary.values()} == {0.1}  # the sweep model's rate
  for name in ('study.md', 'accuracy_vs_flops.png', 'budgeted_batch.png'):
    assert (tmp_path / 'out' / name).exists()
  again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert again.returncode == 0 and '==' not in again.stderr  # nothing retrained
  assert first.stdout.endswith(again.stdout)  # the same report, now without training


def _write_run(out, model, method, lr, seed, val, test):
  d = reproduce._run_dir(out, model, method, lr, seed)
  d.mkdir(parents=True)
  (d / 'results.json').write_text(json.dumps({'exits': [
      {'flops': 1e6 * (k + 1), 'validation_accuracy': val, 'test_accuracy': test[k]}
      for k in range(2)], 'budgeted_batch': []}))


def test_paired_difference_and_rate_choice(tmp_path):
  study = reproduce.Study('toy', {'m': 2, 'other': 2}, ('sgd', 'osgd'), (0, 1), (0.1, 0.2), 1, 1)
  write = lambda *a: _write_run(tmp_path, 'm', *a)
  write('sgd', 0.1, 0, 0.5, [0.5, 0.6]); write('sgd', 0.2, 0, 0.7, [0.6, 0.7])
  write('sgd', 0.2, 1, 0.7, [0.62, 0.72])
  write('osgd', 0.1, 0, 0.8, [0.7, 0.8]); write('osgd', 0.2, 0, 0.6, [0.1, 0.1])
  write('osgd', 0.1, 1, 0.8, [0.66, 0.74])
  _write_run(tmp_path, 'other', 'osgd', 0.1, 0, 0.0, [0.3, 0.4])  # at the sweep model's rate
  _write_run(tmp_path, 'other', 'osgd', 0.2, 0, 0.9, [0.9, 0.9])  # not swept here: ignored
  assert reproduce.best_rate(study, tmp_path, 'sgd') == 0.2
  assert reproduce.best_rate(study, tmp_path, 'osgd') == 0.1
  rows = reproduce.summarize(study, tmp_path)
  np.testing.assert_allclose(rows['m/osgd']['mean'], [0.68, 0.77])
  np.testing.assert_allclose(rows['other/osgd']['mean'], [0.3, 0.4])
  assert 'other/sgd' not in rows  # nothing run yet
  diff = reproduce.paired_difference(rows['m/osgd'], rows['m/sgd'])
  np.testing.assert_allclose(diff['mean'], [(0.1 + 0.04) / 2, (0.1 + 0.02) / 2])
  _write_run(tmp_path, 'other', 'sgd', 0.2, 0, 0.0, [0.5, 0.2])
  pooled = reproduce.pooled_difference(study, reproduce.summarize(study, tmp_path), 'osgd')
  per_pair = np.array([[0.1, 0.1, 0.1], [0.04, 0.02, 0.03], [-0.2, 0.2, 0.0]])  # first, last, mean
  assert (pooled['models'], pooled['pairs']) == (2, 3)
  np.testing.assert_allclose(pooled['mean'], per_pair.mean(0), atol=1e-12)
  np.testing.assert_allclose(pooled['std'], per_pair.std(0), atol=1e-12)
  mean_over_exits = per_pair[:, 2]
  np.testing.assert_allclose(pooled['t'], mean_over_exits.mean() / (
      mean_over_exits.std(ddof=1) / np.sqrt(3)))
  reverse = reproduce.pooled_difference(study, reproduce.summarize(study, tmp_path), 'sgd', 'osgd')
  np.testing.assert_allclose(reverse['mean'], -per_pair.mean(0), atol=1e-12)


def test_a_diverged_run_is_recorded_scores_lowest_and_is_not_retried(tmp_path, monkeypatch):
  study = reproduce.Study('toy', {'m': 2}, ('sgd',), (0, 1), (0.1, 0.2), 1, 1)
  calls = []
  def fake_main(argv):
    calls.append(argv)
    if argv[argv.index('--learning_rate') + 1] == '0.2':
      raise train.Diverged('error: the loss became nan at step 3', 3)
    arg = lambda name: argv[argv.index(name) + 1]
    _write_run(tmp_path, arg('--model'), 'sgd', 0.1, int(arg('--seed')), 0.1, [0.2, 0.3])
  monkeypatch.setattr(train, 'main', fake_main)
  assert reproduce.run_cell(study, tmp_path, 'm', 'sgd', 0.2, 0, '') == {'diverged': 3}
  reproduce.run_cell(study, tmp_path, 'm', 'sgd', 0.1, 0, '')
  assert reproduce.best_rate(study, tmp_path, 'sgd') == 0.1  # despite its low score
  reproduce.run(study, tmp_path, '')  # seed 1 at 0.1, then the independent networks
  assert [(c[1], c[c.index('--seed') + 1]) for c in calls[2:]] == [
      ('m', '1'), ('independent', '0'), ('independent', '1')]
  reproduce.run(study, tmp_path, '')
  assert len(calls) == 5  # nothing retried, the diverged run included
  assert reproduce.summarize(study, tmp_path)['m/sgd']['seeds'] == [0, 1]


@pytest.mark.parametrize('name', ['pcgrad', 'mgda', 'adaloss', 'osgd_exit_norm'])
def test_trainer_optimizers_take_a_step(name):
  network = models.create('branched', num_classes=5, num_exits=3, width=4)
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 1))
  y = jax.numpy.arange(8) % 5
  config = train.Config(num_exits=3)
  tx, per_exit = optimizers.make(name, config, total_steps=10, steps_per_epoch=5)
  state = aj.create_train_state(network, tx, jax.random.key(0), x)
  step = jax.jit(aj.make_train_step(network, tx, per_exit=per_exit))
  for _ in range(3):
    state, metrics = step(state, x, y)
  assert np.all(np.isfinite(metrics['exit_losses'])) and int(state.step) == 3


def test_cifar_study_runs_the_same_configurations_full_length(tmp_path, monkeypatch):
  fmnist, cifar = reproduce.full_study(), reproduce.full_study('cifar100')
  assert (cifar.models, cifar.methods, cifar.learning_rates) == (
      fmnist.models, fmnist.methods, fmnist.learning_rates)
  calls = []
  monkeypatch.setattr(train, 'main', calls.append)
  reproduce.run_cell(cifar, tmp_path, 'nested_both', 'osgd', 0.1, 2, 'data')
  argv = dict(zip(calls[0][::2], calls[0][1::2]))
  assert argv['--dataset'] == 'cifar100' and argv['--num_exits'] == '3'
  assert int(argv['--epochs']) >= 100 and '--max_steps_per_epoch' not in argv
  with pytest.raises(ValueError, match='unknown dataset .*cifar10'):
    reproduce.full_study('cifar-10')
