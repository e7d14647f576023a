"""The study package: run keys and their layout, the read-only store, sweeps, statistics,
endpoints and declared tests."""

import json
import math
import pathlib

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import train
from experiments.study import declared, endpoints, stats
from experiments.study.arms import Arm, ArmRuns
from experiments.study.declared import Primary
from experiments.study.keys import DepthPilotKey, PilotKey, RunKey, ScreenKey, parse
from experiments.study.regime import Regime
from experiments.study.runner import Runner
from experiments.study.store import Diverged, Finished, Store
from experiments.study.sweep import SweepRule, sweep


def results_json(val, test, mflops=(1.0, 4.0), params=(10, 30)):
  """A finished run's ``results.json``: every exit at validation accuracy ``val``."""
  exits = [{'exit': k + 1, 'flops': 1e6 * f, 'params': p, 'test_accuracy': t,
            'validation_accuracy': val} for k, (f, p, t) in enumerate(zip(mflops, params, test))]
  curve = [{'q': q, 'flops': 1e6 * (1 + q), 'accuracy': a} for q, a in ((0.5, 0.4), (2.0, 0.6))]
  return {'exits': exits, 'budgeted_batch': curve, 'train_seconds': 1.0}


def write_results(workdir: pathlib.Path, run_results: dict) -> None:
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / 'results.json').write_text(json.dumps(run_results))


def arm_runs(test, mflops=(1.0, 2.0), diverged=(), curve=()):
  """An arm's runs on seeds 4, 5, ...: test accuracies per exit, one early-exit curve for all."""
  return ArmRuns(test=dict(enumerate(test, start=4)), mflops=list(mflops),
                 curves={s: list(curve) for s in range(4, 4 + len(test))},
                 diverged=list(diverged), missing=[])


# ----- keys and the layout -----

@pytest.mark.parametrize('key, folder', [
    (RunKey('branched', 'osgd_global', 0.4, 4), 'runs/branched/osgd_global/lr0.4/seed4'),
    (RunKey('nested_width', 'sgd', 0.05, 0), 'runs/nested_width/sgd/lr0.05/seed0'),
    (RunKey('branched', 'sgd', 0.1, 5, doubled=True), 'runs_doubled/branched/sgd/lr0.1/seed5'),
    (RunKey('branched', 'osgd_global_every8', 1.6, 12),
     'runs/branched/osgd_global_every8/lr1.6/seed12'),
    (PilotKey(2, 'nested_width', 16), 'pilot/width2/nested_width/epochs16'),
    (PilotKey(None, 'independent', 1), 'pilot/default_width/independent/epochs1'),
    (DepthPilotKey(4), 'pilot/width4/independent_depth/confirm'),
    (ScreenKey('upgrad', 0.2), 'screen/upgrad/lr0.2'),
])
def test_a_key_and_its_folder_round_trip(key, folder):
  assert '/'.join(key.parts()) == folder
  assert parse(folder) == key
  assert parse(pathlib.PurePath(folder)) == key
  assert Store(pathlib.Path('out')).workdir(key) == pathlib.Path('out', folder)


@pytest.mark.parametrize('folder, why', [
    ('runs/branched/sgd/lr0.1', 'not enough values'),  # no seed
    ('runs/branched/sgd/lr0.1/seed4/extra', 'too many values'),
    ('runs/branched/sgd/0.1/seed4', "does not start with 'lr'"),
    ('runs/branched/sgd/lr0.10/seed4', 'writes it as runs/branched/sgd/lr0.1/seed4'),
    ('runs/branched/sgd/lr0.1/seed04', 'writes it as runs/branched/sgd/lr0.1/seed4'),
    ('runs/branched/sgd/lr0.1/seedx', 'seed takes a whole number'),
    ('runs/branched/sgd/lr-0.1/seed4', 'positive and finite'),
    ('pilot/width2/nested_width', 'not enough values'),  # no length
    ('pilot/widthtwo/nested_width/epochs4', 'width takes a whole number'),
    ('quick/runs/branched/sgd/lr0.1/seed4', "'quick' is none of"),
])
def test_a_folder_outside_the_layout_is_refused_and_the_layout_named(folder, why):
  with pytest.raises(ValueError, match=f'{folder} is not a run folder') as refused:
    parse(folder)
  assert why in str(refused.value) and 'runs/<model>/<method>/lr<rate>/seed<seed>' in str(
      refused.value)


# ----- the store and the runner -----

def test_the_store_reads_outcomes_and_curves_and_never_creates_a_folder(tmp_path):
  store = Store(tmp_path / 'study')
  key = RunKey('m', 'sgd', 0.1, 0)
  assert store.outcome(key) is None and store.learning_curve(key) == []
  assert store.outcome(PilotKey(2, 'm', 4)) is None
  assert store.compute_parts(lambda key: 'all') == {}
  assert list(tmp_path.iterdir()) == []  # reading created nothing
  write_results(store.workdir(key), results_json(0.5, [0.3, 0.4]))
  done = store.outcome(key)
  assert isinstance(done, Finished)
  assert (done.test_accuracy, done.validation_accuracy) == ([0.3, 0.4], [0.5, 0.5])
  assert (done.mflops, done.params, done.train_seconds) == ([1.0, 4.0], [10, 30], 1.0)
  diverged = store.workdir(RunKey('m', 'sgd', 0.2, 0))
  diverged.mkdir(parents=True)
  (diverged / 'diverged.json').write_text(json.dumps({'step': 3, 'message': 'nan'}))
  assert store.outcome(RunKey('m', 'sgd', 0.2, 0)) == Diverged(3)


def test_compute_parts_count_each_parts_finished_runs_in_folder_order(tmp_path):
  store = Store(tmp_path)
  for key, seconds in ((RunKey('m', 'sgd', 0.1, 1), 60.0), (PilotKey(2, 'm', 4), 30.0),
                       (RunKey('m', 'sgd', 0.1, 0), 120.0), (ScreenKey('sgd', 0.1), 10.0)):
    write_results(store.workdir(key),
                  dict(results_json(0.5, [0.5, 0.5]), train_seconds=seconds))
  other_study = tmp_path / 'cifar10' / 'runs' / 'm' / 'sgd' / 'lr0.1' / 'seed0'
  write_results(other_study, results_json(0.5, [0.5]))
  parts = store.compute_parts(lambda key: type(key).__name__)  # another study's folder: not read
  assert list(parts.items()) == [('PilotKey', (1, 30.0)), ('RunKey', (2, 180.0)),
                                 ('ScreenKey', (1, 10.0))]
  write_results(tmp_path / 'runs' / 'm' / 'sgd' / 'lr0.1', results_json(0.5, [0.5]))  # no seed
  with pytest.raises(ValueError, match='runs/m/sgd/lr0.1 is not a run folder'):
    store.compute_parts(lambda key: 'all')


def test_the_runner_trains_what_the_store_lacks_and_records_divergence(tmp_path, monkeypatch):
  calls = []

  def fake_train(config, workdir, data_dir):
    calls.append((config.optimizer, config.learning_rate, config.epochs))
    if config.learning_rate == 0.2:
      raise train.Diverged('error: the loss became nan at step 3', 3)
    write_results(pathlib.Path(workdir), results_json(0.5, [0.5, 0.5]))

  monkeypatch.setattr(train, 'train_and_evaluate', fake_train)
  runner = Runner(Store(tmp_path), '')
  source = runner.training(Regime('toy', epochs=2), lambda model: 2)
  assert isinstance(source(RunKey('branched', 'sgd', 0.1, 0)), Finished)
  assert source(RunKey('branched', 'sgd', 0.2, 0)) == Diverged(3)
  assert isinstance(source(RunKey('branched', 'sgd', 0.1, 0, doubled=True)), Finished)
  for key in (RunKey('branched', 'sgd', 0.1, 0), RunKey('branched', 'sgd', 0.2, 0)):
    source(key)  # read back: neither trained again
  assert calls == [('sgd', 0.1, 2), ('sgd', 0.2, 2), ('sgd', 0.1, 4)]


def test_regime_builds_the_configs_every_run_shares():
  regime = Regime('fashion_mnist', epochs=10, train_size=1000)
  config = regime.config('branched', 'osgd', 0.2, seed=3, num_exits=4)
  assert (config.epochs, config.train_size, config.learning_rate, config.seed) == (10, 1000, 0.2, 3)
  assert config.warmup_epochs == pytest.approx(0.5) and config.eval_every == 0
  doubled = regime.run_config(RunKey('branched', 'osgd', 0.2, 3, doubled=True), num_exits=4)
  assert (doubled.epochs, doubled.warmup_epochs) == (20, pytest.approx(1.0))
  assert regime.run_config(RunKey('branched', 'osgd', 0.2, 3), num_exits=4) == config


# ----- sweeps -----

def test_the_sweep_grows_its_grid_until_the_chosen_rate_is_interior(tmp_path):
  store = Store(tmp_path)
  rule = SweepRule((0.1, 0.2), max_extensions=2, seed=0)
  put = lambda lr, val: write_results(store.workdir(RunKey('m', 'sgd', lr, 0)),
                                      results_json(val, [0.5, 0.5]))
  put(0.1, 0.5)
  put(0.2, 0.7)
  assert sweep(rule, store.outcome, 'm', 'sgd').rate is None  # 0.4 is missing
  put(0.4, 0.8)
  assert sweep(rule, store.outcome, 'm', 'sgd').rate is None  # and now 0.8
  put(0.8, 0.6)
  chosen = sweep(rule, store.outcome, 'm', 'sgd')
  assert chosen.rate == 0.4 and not chosen.at_end
  assert sorted(chosen.scores) == [0.1, 0.2, 0.4, 0.8]
  capped = sweep(SweepRule((0.1, 0.2), max_extensions=1, seed=0), store.outcome, 'm', 'sgd')
  assert capped.rate == 0.4 and capped.at_end  # 0.4 is the last rate it may try


def test_downward_growth_and_divergence_scoring_lowest(tmp_path):
  store = Store(tmp_path)
  rule = SweepRule((0.1, 0.2), max_extensions=2, seed=0)
  write_results(store.workdir(RunKey('m', 'osgd', 0.1, 0)), results_json(0.6, [0.5, 0.5]))
  diverged = store.workdir(RunKey('m', 'osgd', 0.2, 0))
  diverged.mkdir(parents=True)
  (diverged / 'diverged.json').write_text(json.dumps({'step': 3, 'message': 'nan'}))
  unfinished = sweep(rule, store.outcome, 'm', 'osgd')
  assert unfinished.rate is None  # 0.05 missing
  with pytest.raises(ValueError, match='sweep has not finished'):
    unfinished.chosen_rate()
  write_results(store.workdir(RunKey('m', 'osgd', 0.05, 0)), results_json(0.5, [0.5, 0.5]))
  chosen = sweep(rule, store.outcome, 'm', 'osgd')
  assert chosen.rate == 0.1 and chosen.scores[0.2] == -math.inf


# ----- statistics -----

def test_statistics_against_hand_computed_values():
  mean, std = stats.mean_std([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])
  np.testing.assert_allclose(mean, [3.0, 10.0])
  np.testing.assert_allclose(std, [2.0, 0.0])  # ddof=1: sqrt(((-2)^2 + 0 + 2^2) / 2)
  assert np.isnan(stats.mean_std([[1.0]])[1][0])
  np.testing.assert_allclose(stats.paired_t([1.0, 2.0, 3.0]), 2.0 / (1.0 / np.sqrt(3)))
  assert math.isnan(stats.paired_t([1.0])) and math.isnan(stats.paired_t([2.0, 2.0]))
  np.testing.assert_allclose(stats.critical_t(3, 1), 4.302652729911275)  # t(0.975, 2 dof)
  np.testing.assert_allclose(stats.critical_t(3, 10), scipy_stats.t.ppf(1 - 0.05 / 20, 2))
  assert stats.critical_t(3, 10) > stats.critical_t(3, 1)
  # [1, 2, 3]: mean 2, std 1, n 3; one comparison: 2 ± 4.3027 / sqrt(3) = 2 ± 2.4841.
  np.testing.assert_allclose(stats.interval([1.0, 2.0, 3.0], 1), [2 - 2.48414, 2 + 2.48414],
                             atol=1e-5)
  lo, hi = stats.interval([1.0, 2.0, 3.0], 10)
  assert lo < 2 - 2.48414 and hi > 2 + 2.48414 and np.isclose((lo + hi) / 2, 2.0)
  assert all(math.isnan(v) for v in stats.interval([1.0], 1))


def test_the_paired_test_of_a_difference_is_the_paired_t_against_its_bonferroni_bound():
  test = stats.paired_test(np.array([1.0, 2.0, 3.0]), 1)
  assert (test.mean, test.margin) == (2.0, None)
  np.testing.assert_allclose([test.t, test.critical_t], [2 * np.sqrt(3), 4.302652729911275])
  np.testing.assert_allclose(test.interval, [2 - 2.48414, 2 + 2.48414], atol=1e-5)
  assert not test.passed  # t = 3.46 below 4.30
  assert stats.paired_test(np.array([1.0, 2.0, 3.0]), 1, alpha=0.2).passed
  assert not stats.paired_test(np.array([1.0]), 1).passed  # one pair: no test


@pytest.mark.parametrize('shift, spread', [(0.0, 0.3), (0.6, 0.3), (0.2, 1.5), (-0.9, 0.05)])
def test_equivalence_is_two_one_sided_tests_against_scipy(shift, spread):
  d = shift + spread * np.random.default_rng(1).standard_normal(8)
  got = stats.paired_test(d, 2, margin=1.0)
  # Independent reference: scipy's one-sided tests against -margin and +margin, each at 0.05 / 2.
  above = scipy_stats.ttest_1samp(d, -1.0, alternative='greater').pvalue
  below = scipy_stats.ttest_1samp(d, 1.0, alternative='less').pvalue
  assert got.passed == (max(above, below) < 0.025)
  lo, hi = got.interval
  assert got.passed == (-1.0 < lo and hi < 1.0)  # the interval TOST reads lies inside
  np.testing.assert_allclose((lo + hi) / 2, d.mean())


def test_equivalence_refuses_a_margin_that_is_not_positive_and_needs_spread():
  with pytest.raises(ValueError, match='margin must be positive'):
    stats.paired_test(np.ones(8), 1, margin=0.0)
  assert not stats.paired_test(np.zeros(8), 1, margin=1.0).passed


# ----- endpoints -----

def test_deliverable_accuracy_is_the_deepest_exit_that_fits():
  mflops, accuracy = [1.0, 2.0, 4.0], [0.5, 0.7, 0.9]
  got = endpoints.deliverable(mflops, accuracy, np.array([0.5, 1.0, 1.9, 2.0, 3.99, 4.0, 100.0]))
  np.testing.assert_array_equal(got, [np.nan, 0.5, 0.5, 0.7, 0.7, 0.9, 0.9])


def test_early_exit_delivers_the_costliest_operating_point_that_fits():
  mflops, accuracy = [1.0, 4.0], [0.5, 0.9]
  curve = [(3.0, 0.6), (2.0, 0.7)]  # chosen by cost: the costlier point wins though less accurate
  got = endpoints.early_exit_delivered(mflops, accuracy, curve,
                                       np.array([0.5, 1.0, 2.5, 3.0, 3.9, 4.0]))
  np.testing.assert_array_equal(got, [np.nan, 0.5, 0.7, 0.6, 0.6, 0.9])


def test_budgets_span_what_both_networks_deliver():
  grid = endpoints.budgets([0.27, 0.76, 2.57, 9.54], [1.06, 2.4, 3.62, 5.12], num=5)
  np.testing.assert_allclose(grid[[0, -1]], [1.06, 5.12])
  np.testing.assert_allclose(np.diff(np.log(grid)), np.log(5.12 / 1.06) / 4)
  with pytest.raises(ValueError, match='do not overlap'):
    endpoints.budgets([1.0, 2.0], [3.0, 4.0])


def test_each_endpoint_by_hand():
  a = arm_runs([[0.6, 0.8]], mflops=(1.0, 4.0), curve=[(2.0, 0.7)])
  b = arm_runs([[0.5, 0.9]], mflops=(2.0, 3.0))
  assert endpoints.difference('first_exit', a, b, 4) == pytest.approx(0.1)
  assert endpoints.difference('mean_over_exits', a, b, 4) == pytest.approx(0.0)
  # Budgets 2..3 (both deliver): a delivers exit 1 (0.6) throughout; b delivers 0.5 below 3 and
  # 0.9 at 3. With 8 log-spaced budgets only the last reaches 3.
  assert endpoints.difference('deliverable_cost', a, b, 4) == pytest.approx((7 * 0.1 - 0.3) / 8)
  # Early exit allowed: a's curve point (2.0 MFLOPs, 0.7) fits every budget; b is as above.
  assert endpoints.difference('early_exit_cost', a, b, 4) == pytest.approx((7 * 0.2 - 0.2) / 8)
  with pytest.raises(ValueError, match="unknown endpoint 'early_exit'"):
    endpoints.difference('early_exit', a, b, 4)  # never read as another endpoint


# ----- declared tests -----

def test_a_declared_test_names_a_known_endpoint_and_a_positive_margin():
  with pytest.raises(ValueError, match="unknown endpoint 'first-exit'"):
    Primary('q', Arm('m', 'x'), Arm('m', 'y'), 'first-exit')
  with pytest.raises(ValueError, match='margin must be positive'):
    Primary('q', Arm('m', 'x'), Arm('m', 'y'), 'first_exit', margin=-1.0)


def test_a_declared_test_pairs_seeds_counts_failures_and_corrects_for_the_family():
  rng = np.random.default_rng(0)
  base = rng.uniform(0.5, 0.6, size=(8, 1))
  a = arm_runs(base + 0.02 + rng.normal(0, 0.005, size=(8, 1)), diverged=[12])
  b = arm_runs(base)
  del a.test[11]  # seed 11 diverged for a: it leaves the pair
  primary = Primary('q', Arm('m', 'x'), Arm('m', 'y'), 'first_exit')
  row = declared.test_row(primary, a, b, num_tests=6)
  assert row['pairs'] == 7 and row['seeds'] == list(range(4, 11))
  assert row['diverged'] == {'m/x': [12], 'm/y': []}
  d = 100 * (np.array([a.test[s][0] for s in range(4, 11)]) - base[:7, 0])
  t = d.mean() / (d.std(ddof=1) / np.sqrt(7))
  crit = scipy_stats.t.ppf(1 - 0.05 / 12, 6)
  assert row['t'] == pytest.approx(t) and row['critical_t'] == pytest.approx(crit)
  half = crit * d.std(ddof=1) / np.sqrt(7)
  np.testing.assert_allclose(row['interval'], [d.mean() - half, d.mean() + half])
  assert row['passed'] == (abs(t) >= crit) and row['passed']
  assert '| 7 (+1 diverged' in declared.cells(row)
  assert list(row) == ['question', 'a', 'b', 'endpoint', 'pairs', 'diverged', 'missing', 'seeds',
                       'differences', 'mean', 't', 'critical_t', 'interval', 'passed']
  one_pair = declared.test_row(primary, a, arm_runs(base[:1]), num_tests=6)
  assert one_pair['pairs'] == 1 and 't' not in one_pair  # one pair: no test
