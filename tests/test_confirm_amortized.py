"""The amortized-OSGD confirmation: its equivalence row, declared family, arm and pipeline."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats as scipy_stats

from experiments import confirm, confirm_amortized
from experiments.study import declared, stats
from experiments.study.regime import Regime
from tests.test_study import arm_runs

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_an_equivalence_row_pairs_seeds_and_reads_tost():
  rng = np.random.default_rng(0)
  base = rng.uniform(0.5, 0.6, size=(8, 1))
  a, b = arm_runs(base + rng.normal(0, 0.002, size=(8, 1))), arm_runs(base)
  row = declared.test_row(confirm_amortized.PRIMARIES[1], a, b, num_tests=2)
  d = 100 * (np.array([a.test[s][0] for s in range(4, 12)]) - base[:, 0])
  assert row['pairs'] == 8 and row['margin'] == 1.0
  assert row['mean'] == pytest.approx(d.mean())
  tost = stats.paired_test(d, 2, margin=1.0)
  assert (row['t'], row['critical_t'], row['interval'], row['passed']) == (
      tost.t, tost.critical_t, list(tost.interval), tost.passed)
  assert row['passed']  # 0.2-point noise around zero: equivalent within a point
  text = confirm_amortized.headline({'primary': [row, row], 'seeds': list(range(4, 12))})
  assert text.count(': equivalent.') == 2 and '95 % interval, margin ±1:' in text


def test_the_declaration_fixes_the_family_before_the_runs():
  text = confirm_amortized.declaration()
  assert all(f'`{p.a}` − `{p.b}`' in text for p in confirm_amortized.PRIMARIES)
  assert f'±{scipy_stats.t.ppf(1 - 0.05 / 4, 7):.2f}' in text  # two-sided, Bonferroni over 2
  assert f'above {scipy_stats.t.ppf(1 - 0.05 / 2, 7):.2f}' in text  # TOST's one-sided tests
  used = set(confirm.SEEDS) | set(confirm.FIRST_STUDY_SEEDS) | {0}
  assert set(confirm_amortized.SEEDS).isdisjoint(used) and len(confirm_amortized.SEEDS) == 8


def test_the_amortized_arm_is_the_trainers_refresh_every():
  reg = Regime('fashion_mnist', epochs=16, width=2)
  config = reg.config(confirm_amortized.AMORTIZED.model, confirm_amortized.AMORTIZED.method,
                      0.4, seed=12, num_exits=4)
  assert (config.optimizer, config.refresh_every) == ('osgd_global', 8)
  plain = reg.config('branched', 'osgd_global', 0.4, seed=12, num_exits=4)
  assert (plain.optimizer, plain.refresh_every) == ('osgd_global', 1)


def test_readme_states_the_result_only_when_the_report_has_it():
  path = ROOT / 'results' / 'confirm_amortized.json'
  summary = json.loads(path.read_text()) if path.exists() else None
  text = summary and confirm_amortized.headline(summary)
  readme = (ROOT / 'README.md').read_text()
  if text:
    assert text in readme
  else:
    assert 'osgd_global_every8` − `branched/sgd`:' not in readme


@pytest.mark.slow
@pytest.mark.pipeline
def test_quick_amortized_confirmation_runs_and_reports_both_tests(tmp_path):
  out = subprocess.run([sys.executable, '-m', 'experiments.confirm_amortized', '--quick', '--out',
                        str(tmp_path), '--data_dir', str(tmp_path / 'data')],
                       capture_output=True, text=True, cwd=ROOT, timeout=1200)
  assert out.returncode == 0, out.stderr[-3000:]
  summary = json.loads((tmp_path / 'confirm_amortized.json').read_text())
  assert [row['pairs'] for row in summary['primary']] == [2, 2]
  assert all('t' in row for row in summary['primary'])
  assert confirm_amortized.headline(summary) in (tmp_path / 'confirm_amortized.md').read_text()
  assert summary['replication']['pairs'] == 2  # test 1 itself on the same seeds, descriptive
  assert 'Descriptive (not a declared test)' in (tmp_path / 'confirm_amortized.md').read_text()
  amortized = json.loads(next(tmp_path.glob('runs/branched/osgd_global_every8/*/seed12/'
                                            'config.json')).read_text())
  assert amortized['refresh_every'] == 8
