"""The confirmatory study: its declared family, depth pilot, report, compute and pipeline."""

import json
import pathlib
import subprocess
import sys

import pytest
from scipy import stats as scipy_stats

from experiments import confirm, reproduce
from experiments.study import stats
from experiments.study.regime import Regime
from experiments.study.store import Finished, Store
from tests.test_reproduce import FIRST_STUDY, write_finished_runs

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_compute_counts_only_the_confirmations_own_runs(tmp_path):
  write_finished_runs(tmp_path)  # the first study's runs there are not counted
  text = confirm.compute_markdown(confirm.Confirm(FIRST_STUDY), Store(tmp_path))
  assert ('depth pilot 1 runs 10 min, new sweeps 2 runs 20 min, descriptive methods 1 runs 1 min, '
          'fresh seeds 3 runs 18 min, twice the epochs 1 runs 4 min; in all 0.9 h') in text
  assert 'Per fresh seed (every primary arm, same caveat): seed 4 15 min, seed 10 3 min.' in text


def _row(i, mean, passed, pairs=8, diverged=()):
  p = confirm.PRIMARIES[i]
  return {'question': p.question, 'a': str(p.a), 'b': str(p.b), 'endpoint': p.endpoint,
          'pairs': pairs, 'diverged': {str(p.a): list(diverged), str(p.b): []}, 'mean': mean,
          'interval': [mean - 1.0, mean + 1.0], 't': 4.0 if passed else 1.0, 'critical_t': 3.64,
          'passed': passed}


def test_the_headline_states_every_primary_only_once_all_have_their_seeds():
  rows = [_row(i, mean=0.5 * i, passed=i == 2) for i in range(len(confirm.PRIMARIES))]
  rows[4] = _row(4, mean=2.0, passed=False, pairs=7, diverged=[9])  # a diverged seed counts
  text = confirm.headline({'primary': rows, 'seeds': list(confirm.SEEDS)})
  assert text.startswith('Of the 6 declared primary tests on 8 fresh seeds (Bonferroni over all '
                         '6), 1 passed (3):')
  assert ('3. **Does OSGD change the depth-nested network?** `nested_depth/osgd_global` − '
          '`nested_depth/sgd`, test accuracy, mean over the exits: +1.00 points (simultaneous '
          '95 % interval +0.00 to +2.00; t = +4.00 over 8 pairs, critical 3.64): passed.') in text
  assert 't = +1.00 over 7 pairs, 1 diverged, critical 3.64): not passed.' in text
  assert text.count('not passed.') == 5
  rows[0] = _row(0, mean=0.1, passed=True, pairs=7)  # a seed still to run
  summary = {'primary': rows, 'seeds': list(confirm.SEEDS), 'depth_width': 2,
             'first_study': rows, 'doubled': [], 'descriptive': []}
  assert confirm.headline(summary) is None
  # Nor does the report's table give a verdict on a test short of its declared seeds.
  report = confirm.markdown(summary)
  assert report.count('| pending (declared on 8 seeds) |') == 1
  assert '| +0.10 | -0.90 to +1.10 | +4.00 | pending' in report


def test_the_descriptive_part_shows_test_1_per_seed_and_every_rate():
  rows = [_row(i, mean=0.5, passed=False) for i in range(len(confirm.PRIMARIES))]
  doubled = [dict(_row(0, mean=m, passed=False, pairs=3), epochs=e, seeds=[4, 5, 6],
                  differences=d) for e, m, d in ((16, 2.0, [2.5, 1.5, 2.0]),
                                                 (32, 1.0, [1.25, -0.5, 2.25]))]
  report = confirm.markdown({'primary': rows, 'seeds': list(confirm.SEEDS), 'depth_width': 2,
                             'first_study': rows, 'doubled': doubled, 'descriptive': [],
                             'rates': {'branched/sgd': {'rate': 0.2, 'at_end': False},
                                       'nested_width/osgd_exits': {'rate': 1.6, 'at_end': True}}})
  assert '| 1, 16 epochs | `branched/osgd_global` − `branched/sgd` | first_exit | 3 | +2.00 |' in report
  assert '| 1, 32 epochs | `branched/osgd_global` − `branched/sgd` | first_exit | 3 | +1.00 |' in report
  assert ('Test 1 per seed at both budgets (points, seeds 4, 5, 6): 16 epochs +2.50 / +1.50 / '
          '+2.00; 32 epochs +1.25 / -0.50 / +2.25.') in report
  assert ('("end": still at an end of its grid after the last extension): `branched/sgd` 0.2, '
          '`nested_width/osgd_exits` 1.6 end.') in report


def test_readme_states_the_primary_results_only_when_the_report_has_them():
  path = ROOT / 'results' / 'confirm.json'
  summary = json.loads(path.read_text()) if path.exists() else None
  text = summary and confirm.headline(summary)
  readme = (ROOT / 'README.md').read_text()
  if text:
    assert text in readme
  else:
    assert 'declared primary tests on' not in readme


def test_the_depth_pilot_takes_the_widest_width_where_capacity_matters():
  spec = confirm.Confirm(reproduce.full_study(), depth_widths=(2, 4, 8))
  run = lambda first, last: Finished([{'validation_accuracy': first},
                                      {'validation_accuracy': last}], [], 0.0)
  assert confirm.depth_width(spec, {2: run(0.7, 0.8), 4: run(0.7, 0.75), 8: run(0.8, 0.81)}) == 4
  assert confirm.depth_width(spec, {2: run(0.7, 0.71), 4: run(0.7, 0.71), 8: run(0.8, 0.8)}) == 2
  assert confirm.depth_width(spec, {2: run(0.7, 0.8), 4: None, 8: run(0.8, 0.9)}) is None


def test_a_report_before_any_run_says_so(tmp_path):
  confirm.main(['--report_only', '--out', str(tmp_path)])
  assert (tmp_path / 'confirm.md').read_text().endswith('The pilots have not finished: no results yet.\n')


def test_the_declaration_names_every_primary_and_the_family_bound():
  text = confirm.declaration()
  assert all(f'`{p.a}` − `{p.b}`' in text for p in confirm.PRIMARIES)
  assert f'{scipy_stats.t.ppf(1 - 0.05 / 12, 7):.2f}' in text
  assert set(confirm.SEEDS).isdisjoint(confirm.FIRST_STUDY_SEEDS + (0,))
  assert len(confirm.SEEDS) >= 8


@pytest.mark.slow
@pytest.mark.pipeline
def test_quick_confirmation_runs_and_reports_every_primary(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'experiments.confirm', '--quick', '--out',
                        str(tmp_path), '--data_dir', str(tmp_path / 'data')],
                       capture_output=True, text=True, cwd=ROOT, timeout=1200)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads((tmp_path / 'confirm.json').read_text())
  assert [row['pairs'] for row in summary['primary']] == [2] * len(confirm.PRIMARIES)
  assert all('t' in row for row in summary['primary'])
  report = (tmp_path / 'confirm.md').read_text()
  assert report.count('| 2 |') >= len(confirm.PRIMARIES)
  assert confirm.headline(summary) in report  # both seeds ran: the result is stated


def test_the_study_page_states_the_declared_family():
  readme = (ROOT / 'docs' / 'study.md').read_text()
  assert all(f'`{p.a}` − `{p.b}`' in readme for p in confirm.PRIMARIES)
  assert f'|t| >= {stats.critical_t(len(confirm.SEEDS), len(confirm.PRIMARIES)):.2f}' in readme


def test_the_depth_models_run_at_their_own_width_and_growth():
  reg = Regime('fashion_mnist', epochs=16, width=2,
               fixed_widths=(('nested_depth', 4), ('independent_depth', 4)))
  config = reg.config('independent_depth', 'sgd', 0.1, seed=4, num_exits=4)
  assert (config.model, config.growth, config.width) == ('independent', 'depth', 4)
  assert reg.config('nested_depth', 'sgd', 0.1, 4, 4).width == 4
  assert reg.config('branched', 'sgd', 0.1, 4, 4).width == 8  # the base width's factor stays
  assert reg.config('independent', 'sgd', 0.1, 4, 4).growth is None
