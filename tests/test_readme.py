"""The README's examples run as a newcomer would copy them."""

import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / 'README.md'
BLOCKS = re.findall(r'```python\n(.*?)```', README.read_text(), flags=re.S)


def _run(code, tmp_path):
  script = tmp_path / 'example.py'
  script.write_text(code)
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  return out.stdout


def test_usage_example_trains_two_exits(tmp_path):
  stdout = _run(BLOCKS[0], tmp_path)
  losses = [float(v) for v in re.findall(r'[\d.]+(?:e-?\d+)?', stdout.split(':', 1)[1])]
  assert len(losses) == 2 and max(losses) < 0.3, stdout


# What each later example must print: the claim its comments make, as a regular expression.
EXPECTED = {
    1: r'per-exit losses: \[0\.0\d+ +0\.0\d+\]',  # Equinox: both exits trained below 0.1
    2: r'logits: \(3, 32, 10\)',  # NNX: [K, B, C]
    3: r'\[(3 ){7}3\] \[3\.7\d+e\+07',  # an untrained network never gets confident: last exit
    4: r"'w': \(3, 8, 16\)",  # stage 0's Jacobian has a row for each of the 3 exits
    5: r'-0\.0816',  # the user weighting: -0.1 * (g1/|g1| + g2/|g2|)
}


def test_every_example_has_an_expectation():
  assert sorted(EXPECTED) == list(range(1, len(BLOCKS)))


@pytest.mark.parametrize('index', sorted(EXPECTED))
def test_other_examples_print_what_they_claim(index, tmp_path):
  stdout = _run(BLOCKS[index], tmp_path)
  assert re.search(EXPECTED[index], stdout), stdout


def test_the_library_imports_without_the_experiments_extra():
  code = ('import sys, anytime_jax\n'
          'heavy = [m for m in ("tensorflow_datasets", "orbax", "matplotlib", "sklearn", "scipy", '
          '"experiments") if m in sys.modules]\n'
          'assert not heavy, heavy\n'
          'assert anytime_jax.__version__\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
