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


@pytest.mark.parametrize('index', range(1, len(BLOCKS)))
def test_other_examples_run(index, tmp_path):
  _run(BLOCKS[index], tmp_path)


def test_the_library_imports_without_the_experiments_extra():
  code = ('import sys, anytime_jax\n'
          'heavy = [m for m in ("tensorflow_datasets", "orbax", "matplotlib", "sklearn", "scipy", '
          '"experiments") if m in sys.modules]\n'
          'assert not heavy, heavy\n'
          'assert anytime_jax.__version__\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
