"""The study: pilot, its report's statistics, matched comparisons, and every trainer optimizer."""

import dataclasses
import json
import math
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from scipy import stats as scipy_stats

import anytime_jax as aj
from anytime_jax import models
from experiments import data
from experiments import optimizers, pilot, reproduce, train
from experiments.study import stats
from experiments.study.keys import PilotKey, RunKey
from experiments.study.regime import Regime
from experiments.study.runner import Runner
from experiments.study.store import Store
from tests.test_study import results_json, write_results

ROOT = pathlib.Path(__file__).resolve().parents[1]


M = 'nested_width'  # the toy study's anytime model (a real one: the trainer's Config checks it)


def _toy_study(**kwargs):
  toy_pilot = pilot.Pilot('toy', train_size=None, epochs=(1,), models=(M, 'independent'),
                          doubling_points=math.inf, capacity_points=-math.inf)
  return reproduce.Study(**{'pilot': toy_pilot, 'models': {M: 2}, 'methods': ('sgd', 'osgd'),
                            'learning_rates': (0.1, 0.2), 'seeds': (1, 2),
                            'max_grid_extensions': 2, **kwargs})


def test_run_trains_pilot_sweeps_and_seeds_once_each(tmp_path, monkeypatch):
  study = _toy_study(max_grid_extensions=0)
  calls = []

  def fake_train(config, workdir, data_dir):
    calls.append((config.model, config.optimizer, config.learning_rate, config.seed,
                  config.epochs, config.eval_every))
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if config.learning_rate == 0.2 and config.optimizer == 'osgd_leaf':  # the label osgd
      raise train.Diverged('error: the loss became nan at step 3', 3)
    (workdir / 'metrics.jsonl').write_text(json.dumps(
        {'epoch': 1, 'step': 1, 'validation_accuracy': [0.5, 0.6]}) + '\n')
    score = 0.7 if config.learning_rate == 0.2 else 0.6
    write_results(workdir, results_json(score, [0.5 + 0.01 * config.seed, 0.6]))

  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  store = Store(tmp_path)
  reproduce.run(study, Runner(store, ''))
  pilots = [c for c in calls if c[5] == 1]
  # The candidates, then the baseline at twice the chosen (and longest) length.
  assert [(c[0], c[1], c[4]) for c in pilots] == [(M, 'sgd', 1), ('independent', 'sgd', 1),
                                                  (M, 'sgd', 2)]
  study_calls = [c for c in calls if c[5] == 0]
  # Per model: every method's sweep on seed 0, then the reported seeds at the chosen rates. The
  # study's label osgd trains the trainer's osgd_leaf (per-tensor OSGD, as when the study ran).
  assert [(c[0], c[1], c[2], c[3]) for c in study_calls] == [
      (M, 'sgd', 0.1, 0), (M, 'sgd', 0.2, 0), (M, 'osgd_leaf', 0.1, 0), (M, 'osgd_leaf', 0.2, 0),
      (M, 'sgd', 0.2, 1), (M, 'sgd', 0.2, 2), (M, 'osgd_leaf', 0.1, 1), (M, 'osgd_leaf', 0.1, 2),
      ('independent', 'sgd', 0.1, 0), ('independent', 'sgd', 0.2, 0),
      ('independent', 'sgd', 0.2, 1), ('independent', 'sgd', 0.2, 2)]
  reproduce.run(study, Runner(store, ''))
  assert len(calls) == 3 + 12  # nothing retrained, the diverged run included
  rows = reproduce.summarize(study, store)
  assert rows[f'{M}/osgd']['learning_rate'] == 0.1 and rows[f'{M}/osgd']['seeds'] == [1, 2]
  text = reproduce.report(study, store)
  assert '| nested_width | osgd − sgd | 2 |' in text and 'for the 1 comparisons' in text
  assert '| +0.00 to +0.00 |' in text  # equal test accuracies on both seeds: no spread
  assert '{' not in text  # every template filled in
  # Finished runs per part: 3 pilot runs, 4 of the reference, 7 of M (not the diverged one).
  assert 'pilot 3 runs 0 min, `independent` 4 runs 0 min, `nested_width` 7 runs 0 min' in text
  assert 'at equal cost' not in text  # one anytime model: no table without rows
  # 0.2 diverged; the study's label osgd is the trainer's osgd_leaf now
  assert 'defaults to `--optimizer osgd_leaf --learning_rate 0.1`' in text
  assert f'| {M} | osgd | 60.00 | diverged | 0.1 end |' in text  # the sweep table, no extension
  for name in ('pilot.md', 'study.md', 'summary.json', 'learning_curves.png',
               'accuracy_vs_flops.png', 'budgeted_batch.png'):
    assert (tmp_path / name).exists()


def test_matched_cost_compares_at_equal_flops_in_log_space():
  a = {'mflops': [1.0, 4.0, 16.0], 'test': {1: [0.5, 0.7, 0.8]}}
  b = {'mflops': [2.0, 8.0], 'test': {1: [0.6, 0.9]}}
  m = reproduce.matched_cost(a, b)
  assert m['mflops'] == [2.0, 4.0, 8.0]
  # a at 2 MFLOPs: halfway (in log) from 1 to 4 -> 0.6; at 8: halfway 4 -> 16 -> 0.75.
  # b at 4 MFLOPs: halfway from 2 to 8 -> 0.75.
  np.testing.assert_allclose(m['diff'], [[0.6 - 0.6, 0.7 - 0.75, 0.75 - 0.9]])


def test_first_exit_rows_list_each_seed_and_count_the_positive_ones():
  diff = np.array([[0.02, -0.5], [-0.01, 0.5], [0.035, 0.0]])  # [S=3, K=2]
  lines = reproduce._first_exit_rows([('m', 'osgd − sgd', diff)])
  assert lines[-1] == '| m | osgd − sgd | +2.00 / -1.00 / +3.50 | 2 of 3 |'


def test_the_whole_family_is_corrected_over_every_row_of_every_table():
  strong = np.array([[0.010, 0.010], [0.011, 0.011], [0.012, 0.012]])  # t = 19.05 on 3 pairs
  tables = [('per model', [('m', 'a − b', strong), ('m', 'c − b', -strong)]),
            ('at cost', [('sgd', '1 / 2', strong)])]
  lines = reproduce._family_rows(tables)
  critical = stats.critical_t(3, 3)  # 3 comparisons in all: 14.09, below 19.05
  assert 'all 3 comparisons above corrected together' in lines[1] and '3 pass' in lines[1]
  assert f'|t| >= {critical:.2f} with 3 pairs' in lines[1]
  assert lines[5].startswith('| per model | m | a − b | +19.05 | yes |')
  assert lines[7].startswith('| at cost | sgd | 1 / 2 | +19.05 | yes |')
  # With 22 comparisons the bound (20.94) is beyond t = 19.05: none pass.
  many = reproduce._family_rows([('per model', [('m', str(i), strong) for i in range(22)])])
  assert '0 pass' in many[1] and all('| no |' in l for l in many[5:])


def write_finished_runs(root: pathlib.Path) -> None:
  """Finished runs of both studies (``train_seconds`` only): the first study's on ``branched``
  with ``sgd`` and ``osgd``, and the confirmatory study's pilot, sweeps and seeds."""
  def finished(*parts, seconds):
    path = root.joinpath(*parts, 'results.json')
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({'train_seconds': seconds}))
  finished('pilot', 'width2', 'branched', 'epochs16', seconds=60)
  finished('runs', 'branched', 'sgd', 'lr0.1', 'seed0', seconds=120)  # its sweep
  finished('runs', 'branched', 'osgd', 'lr0.1', 'seed3', seconds=180)
  finished('runs', 'branched', 'sgd', 'lr0.1', 'seed4', seconds=600)  # the confirmatory study's
  finished('runs', 'branched', 'osgd_global', 'lr0.2', 'seed4', seconds=300)
  finished('runs', 'branched', 'sgd', 'lr0.1', 'seed10', seconds=180)
  finished('runs', 'branched', 'osgd_exits', 'lr0.1', 'seed4', seconds=60)  # descriptive
  finished('runs', 'nested_depth', 'sgd', 'lr0.1', 'seed0', seconds=600)
  finished('runs', 'branched', 'osgd_exits', 'lr0.1', 'seed0', seconds=600)
  finished('pilot', 'width2', 'independent_depth', 'confirm', seconds=600)
  finished('runs_doubled', 'branched', 'sgd', 'lr0.1', 'seed4', seconds=240)


FIRST_STUDY = dataclasses.replace(reproduce.full_study(), models={'branched': 4},
                                  methods=('sgd', 'osgd'))


def test_compute_counts_only_the_studys_own_runs(tmp_path):
  write_finished_runs(tmp_path)
  text = reproduce.compute_markdown(FIRST_STUDY, Store(tmp_path))
  assert 'pilot 1 runs 1 min, `branched` 2 runs 5 min; in all 0.1 h' in text


def test_cost_to_match_the_last_exit_reads_the_seed_averaged_curve():
  def curve(*accuracies):
    return [{'q': q, 'flops': 1e6 * f, 'accuracy': a}
            for q, f, a in zip((0.1, 0.5, 1.0), (1.0, 2.0, 4.0), accuracies)]
  row = {'mflops': [1.0, 4.0], 'test': {1: [0.5, 0.80], 2: [0.5, 0.82]},  # last exit: 0.81
         'budgeted_batch': {1: curve(0.5, 0.80, 0.81), 2: curve(0.5, 0.8185, 0.81)}}
  # Mean curve 0.5 / 0.80925 / 0.81: within 0.1 points of 0.81 first at 2 MFLOPs.
  assert reproduce.cost_to_match_last_exit(row) == 2.0
  row['budgeted_batch'] = {1: curve(0.5, 0.7, 0.79), 2: curve(0.5, 0.7, 0.79)}
  assert reproduce.cost_to_match_last_exit(row) is None


def test_pilot_chooses_the_cheapest_candidate_meeting_every_criterion():
  p = pilot.Pilot('toy', train_size=None, epochs=(4, 8, 16), widths=(4, 2))
  row = lambda doubling, capacity: {
      'last_exit': 80.0, 'doubling_gain': doubling,
      'independent': [80.0, 80.0 + capacity], 'capacity_gain': capacity}
  rows = {(2, 4): row(1.2, 5.0),  # twice the epochs still add 1.2
          (2, 8): row(0.2, 2.0),  # capacity does not matter enough
          (2, 16): row(np.nan, 2.5),  # the longest, but capacity does not matter enough
          (4, 4): row(0.2, 3.5)}
  chosen, why = pilot.choose(p, rows)
  assert chosen == (4, 4) and 'base width 4, 4 epochs' in why
  rows[(2, 16)] = row(np.nan, 5.0)  # the longest: a fixed budget, chosen on capacity alone
  chosen, why = pilot.choose(p, rows)
  assert chosen == (2, 16) and 'a fixed budget' in why  # the narrower width is tried first
  rows[(2, 8)] = row(0.2, 3.0)
  assert pilot.choose(p, rows)[0] == (2, 8)
  assert pilot.choose(p, {(4, 4): row(0.2, 1.0)})[0] is None


def test_pilot_measures_its_criteria_from_learning_curves(tmp_path):
  p = pilot.Pilot('toy', train_size=None, epochs=(2, 4), widths=(3,))
  for model, epochs, curve in [('nested_width', 2, [[0.5, 0.7], [0.6, 0.8]]),
                               ('nested_width', 4, [[0.5, 0.7]] * 3 + [[0.6, 0.81]]),
                               ('independent', 2, [[0.5, 0.7], [0.6, 0.75]]),
                               ('independent', 4, [[0.5, 0.7]] * 4)]:
    workdir = Store(tmp_path).workdir(PilotKey(3, model, epochs))
    workdir.mkdir(parents=True)
    (workdir / 'metrics.jsonl').write_text(''.join(
        json.dumps({'epoch': i + 1, 'validation_accuracy': a}) + '\n' for i, a in enumerate(curve)))
  rows = pilot.measure(p, Store(tmp_path))
  np.testing.assert_allclose([rows[3, 2]['doubling_gain'], rows[3, 2]['capacity_gain']],
                             [1.0, 15.0])
  assert np.isnan(rows[3, 4]['doubling_gain'])
  assert p.regime(3, 4).config('branched', 'sgd', 0.1, 0, 4).width == 12  # branched: 4x


def test_plateau_check_reports_twice_the_chosen_length_without_deciding(tmp_path):
  p = pilot.Pilot('toy', train_size=None, epochs=(2, 4), widths=(3,))
  for model, epochs, curve in [('nested_width', 2, [[0.5, 0.7]] * 2),
                               ('nested_width', 4, [[0.5, 0.799]] * 3 + [[0.6, 0.80]]),
                               ('nested_width', 8, [[0.5, 0.7]] * 7 + [[0.6, 0.83]]),
                               ('independent', 2, [[0.5, 0.7]] * 2),
                               ('independent', 4, [[0.5, 0.7]] * 3 + [[0.6, 0.9]])]:
    workdir = Store(tmp_path).workdir(PilotKey(3, model, epochs))
    workdir.mkdir(parents=True)
    (workdir / 'metrics.jsonl').write_text(''.join(
        json.dumps({'epoch': i + 1, 'validation_accuracy': a}) + '\n' for i, a in enumerate(curve)))
  store = Store(tmp_path)
  check = pilot.plateau_check(p, store, (3, 4))
  assert check['epochs'] == 8
  np.testing.assert_allclose([check['last_exit'], check['gain']], [83.0, 3.0])
  assert pilot.plateau_check(p, store, (3, 2)) is None  # 4 epochs is itself a candidate
  rows = pilot.measure(p, store)
  assert (3, 8) not in rows  # the check is no candidate
  text = pilot.markdown(p, rows, store)
  assert 'Plateau check' in text and '+3.00 points over 4 epochs (not below' in text
  pilot.plot(p, store, tmp_path / 'curves.png')


@pytest.mark.slow
@pytest.mark.pipeline
def test_quick_study_runs_reports_and_skips_finished_runs(tmp_path):
  data.prepare('digits', str(tmp_path / 'tfds'))
  cmd = [sys.executable, '-m', 'experiments.reproduce', '--quick', '--out', str(tmp_path / 'out'),
         '--data_dir', str(tmp_path / 'tfds')]
  first = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1200)
  assert first.returncode == 0, first.stderr[-3000:]
  summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
  assert set(summary) == {'nested_width/sgd', 'nested_width/osgd', 'branched/sgd',
                          'branched/osgd', 'independent/sgd'}
  assert '| nested_width | osgd − sgd |' in first.stdout
  assert 'First exit per seed' in first.stdout
  assert 'Nested against branched at equal cost' in first.stdout
  assert '| osgd | ' in first.stdout.split('at equal cost')[1]  # its row, with t and interval
  for name in ('study.md', 'pilot.md', 'accuracy_vs_flops.png', 'budgeted_batch.png',
               'learning_curves.png'):
    assert (tmp_path / 'out' / name).exists()
  again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert again.returncode == 0 and '==' not in again.stderr  # nothing retrained
  assert first.stdout.endswith(again.stdout)  # the same report, now without training


# Every optimizer of the trainer; the quick suite keeps one of each kind (CI runs them all).
FAST_OPTIMIZERS = ('osgd', 'pcgrad', 'adaloss', 'sgd')


@pytest.mark.parametrize('name', [n if n in FAST_OPTIMIZERS else pytest.param(n, marks=pytest.mark.slow)
                                  for n in optimizers.OPTIMIZERS])
def test_trainer_optimizers_descend_on_a_batch(name):
  network = models.create('branched', num_classes=5, num_exits=3, width=4, num_levels=2)
  x = jax.random.normal(jax.random.key(0), (8, 8, 8, 1))
  y = jax.numpy.arange(8) % 5
  config = train.Config(num_exits=3, learning_rate=0.1, warmup_epochs=0.0)
  tx, gradients = optimizers.make(name, config, total_steps=100, steps_per_epoch=50)
  state = aj.create_train_state(network, tx, jax.random.key(0), x)
  first = state.params
  step = jax.jit(aj.make_train_step(network, tx, gradients=gradients),
                 donate_argnums=0)  # as the trainer does
  losses = []
  for _ in range(6):
    state, metrics = step(state, x, y)
    losses.append(float(metrics['loss']))
  assert int(state.step) == 6 and all(np.isfinite(losses))
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first),
                                                     jax.tree.leaves(state.params))]
  assert all(moved), f'{moved.count(False)} parameters never moved'
  assert losses[-1] < losses[0], losses


def test_no_optimizer_state_holds_an_array_twice():
  # The trainer donates its state: one buffer passed twice is refused, and one that another
  # state still holds would be deleted under it.
  params = {'w': jax.numpy.zeros((3, 2)), 'b': jax.numpy.zeros(2)}
  for name in optimizers.OPTIMIZERS:
    tx, _ = optimizers.make(name, train.Config(num_exits=3), total_steps=10, steps_per_epoch=5)
    arrays = [leaf for _ in range(2) for leaf in jax.tree.leaves(tx.init(params))
              if isinstance(leaf, jax.Array)]
    assert len({id(a) for a in arrays}) == len(arrays), name


def test_the_study_runs_on_a_known_dataset():
  with pytest.raises(ValueError, match='unknown dataset .*cifar10'):
    reproduce.full_study('cifar-10')
  cifar = reproduce.full_study('cifar100')
  assert cifar.pilot.train_size is None and min(cifar.pilot.epochs) >= 50


def test_screen_picks_each_methods_best_rate_and_marks_divergence(tmp_path, monkeypatch):
  spec = reproduce.Screen(Regime('toy', epochs=1), num_exits=2,
                          learning_rates=(0.05, 0.1, 0.2), methods=('sgd', 'osgd', 'mgda'))

  def fake_train(config, workdir, data_dir):
    if config.optimizer == 'mgda':
      raise train.Diverged('error: the loss became nan at step 1', 1)
    lr = config.learning_rate
    score = 0.5 + lr if config.optimizer == 'sgd' else 0.8 - abs(lr - 0.1)  # osgd: best inside
    write_results(pathlib.Path(workdir), results_json(score, [0.3, 0.4]))

  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  store = Store(tmp_path)
  reproduce.run_screen(spec, Runner(store, ''))
  text = reproduce.screen(spec, store)
  assert '| sgd | 55.00 | 60.00 | 70.00 | 0.2 end | 30.00 / 40.00 |' in text
  assert '| osgd | 75.00 | 80.00 | 70.00 | 0.1 | 30.00 / 40.00 |' in text
  assert '| mgda | diverged | diverged | diverged | all diverged | |' in text
  assert (tmp_path / 'screen.md').read_text() == text
  assert reproduce.screen(spec, store) == text  # read back


def test_the_study_page_shows_the_screen_as_its_report_writes_it():
  table = [line for line in (ROOT / 'results' / 'screen.md').read_text().splitlines()
           if line.startswith('|')]
  assert len(table) == 2 + len(optimizers.OPTIMIZERS)
  page = (ROOT / 'docs' / 'study.md').read_text()
  assert '\n'.join(table) in page


def test_main_job_choice_averages_validation_over_every_finished_seed(tmp_path, monkeypatch):
  study = _toy_study(methods=('sgd', 'osgd', 'osgd_global'), max_grid_extensions=0)
  monkeypatch.setattr(pilot, 'decided_regime', lambda pilot, store: 'a regime')
  store = Store(tmp_path)
  write = lambda method, lr, seed, val: write_results(
      store.workdir(RunKey(M, method, lr, seed)), results_json(val, [0.5, 0.5]))
  for method, best_on_seed0 in (('osgd', 0.80), ('osgd_global', 0.78)):
    write(method, 0.1, 0, 0.70)
    write(method, 0.2, 0, best_on_seed0)
  assert reproduce.main_job_choice(study, store) == {
      'optimizer': 'osgd', 'learning_rate': 0.2, 'score': 0.80, 'seeds': 1}
  for seed in study.seeds:  # the reported seeds reverse the order
    write('osgd', 0.2, seed, 0.70)
    write('osgd_global', 0.2, seed, 0.76)
  choice = reproduce.main_job_choice(study, store)
  assert choice['optimizer'] == 'osgd_global' and choice['seeds'] == 3
  np.testing.assert_allclose(choice['score'], (0.78 + 2 * 0.76) / 3)
  write('osgd_global', 0.1, 1, 0.99)  # another rate's run on a reported seed counts for nothing
  np.testing.assert_allclose(reproduce.main_job_choice(study, store)['score'],
                             (0.78 + 2 * 0.76) / 3)


def test_the_main_jobs_defaults_follow_the_study():
  choice = reproduce.main_job_choice(reproduce.full_study(), Store(ROOT / 'results'))
  if choice is None:
    pytest.skip('the study has not finished the OSGD sweeps its choice needs')
  defaults = train.Config()
  assert (defaults.optimizer, defaults.learning_rate) == (
      choice['optimizer'], choice['learning_rate']), (
          'experiments.train.Config defaults differ from the study\'s choice: set them to '
          f"optimizer={choice['optimizer']!r}, learning_rate={choice['learning_rate']}")
