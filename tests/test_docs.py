"""Every code example in README and docs/ runs as a reader would copy it, and prints what it says.

An example states what it prints in a comment, ``# prints: TEXT``; the test checks that TEXT
appears in its output, so an example that runs but computes the wrong thing fails.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md', *sorted(p for p in (ROOT / 'docs').rglob('*.md')
                                    if '_build' not in p.relative_to(ROOT).parts)]
EXAMPLES = [(page, i, block) for page in PAGES
            for i, block in enumerate(re.findall(r'```python\n(.*?)```', page.read_text(), re.S))]


def test_every_example_states_what_it_prints():
  assert EXAMPLES
  missing = [f'{p.relative_to(ROOT)} #{i}' for p, i, block in EXAMPLES if '# prints: ' not in block]
  assert not missing, missing


@pytest.mark.parametrize('page,index,block', EXAMPLES,
                         ids=[f'{p.relative_to(ROOT)}-{i}' for p, i, _ in EXAMPLES])
def test_example_prints_what_it_claims(page, index, block, tmp_path):
  script = tmp_path / 'example.py'
  script.write_text(block)
  user_default = {k: v for k, v in os.environ.items() if k != 'JAX_THREEFRY_PARTITIONABLE'}
  out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=300, cwd=tmp_path, env=user_default)
  assert out.returncode == 0, out.stderr[-3000:]
  for claim in re.findall(r'# prints: (.*)$', block, re.M):
    assert claim.strip() in out.stdout, (claim, out.stdout[-2000:])


def test_the_library_imports_without_the_experiments_extra():
  code = ('import sys, anytime_jax\n'
          'heavy = [m for m in ("tensorflow_datasets", "orbax", "matplotlib", "sklearn", "scipy", '
          '"experiments") if m in sys.modules]\n'
          'assert not heavy, heavy\n'
          'assert anytime_jax.__version__\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
