"""Every code example in README and docs/ runs as a reader would copy it, and prints what it says.

An example states what it prints in a comment, ``# prints: TEXT``; the test checks that TEXT
appears in its output, so an example that runs but computes the wrong thing fails.
"""

import inspect
import os
import pathlib
import re
import subprocess
import sys

import pytest

import anytime_jax as aj

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


def _docs_build_module():
  """docs/build.py, loaded without writing bytecode into docs/."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location('docs_build', ROOT / 'docs' / 'build.py')
  module = importlib.util.module_from_spec(spec)
  dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True
  try:
    spec.loader.exec_module(module)
  finally:
    sys.dont_write_bytecode = dont_write
  return module


def test_the_docs_build_refuses_remote_scripts_and_stylesheets(tmp_path):
  (tmp_path / 'guides').mkdir()
  (tmp_path / 'index.html').write_text(
      '<link rel="stylesheet" href="_static/custom.css"><script src="_static/mathjax/tex-chtml.js">'
      '</script><a href="https://github.com/x">a link is fine</a>'
      '<link rel="canonical" href="https://example.org/">')
  (tmp_path / 'guides' / 'maths.html').write_text(
      '<script defer src="https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js"></script>'
      '<link href="//fonts.example.org/a.css" rel="stylesheet">')
  assert _docs_build_module().remote_assets(tmp_path) == {'guides/maths.html': [
      '<script> https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js',
      '<link> //fonts.example.org/a.css']}


SITE = ROOT / 'build' / 'docs'  # where CI's docs step (python docs/build.py build/docs) puts it


@pytest.mark.skipif(not (SITE / 'index.html').is_file(),
                    reason='no built site: python docs/build.py build/docs')
def test_the_built_site_reads_offline():
  assert _docs_build_module().remote_assets(SITE) == {}
  assert (SITE / '_static' / 'mathjax' / 'tex-chtml.js').is_file()
  assert 'mathjax/tex-chtml.js' in (SITE / 'index.html').read_text()  # the landing page's maths
  methods = (SITE / 'guides' / 'methods.html').read_text()
  assert 'methods.svg' in methods and 'plt.subplots' not in methods  # the image, not its code


def test_the_docs_build_leaves_docs_as_committed():
  """The build runs from a copy: no _autosummary/, figures or caches appear under docs/."""
  try:
    out = subprocess.run(['git', 'status', '--porcelain', '--ignored', '--', 'docs'], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    pytest.skip('not a git checkout')
  ignored = [line for line in out.splitlines() if line.startswith('!!')]
  assert not ignored, f'build output under docs/ (build with python docs/build.py OUT): {ignored}'


def test_the_methods_table_reads_every_registered_method_from_its_docstring():
  sys.path.insert(0, str(ROOT / 'docs' / '_ext'))
  try:
    import methods_table  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(ROOT / 'docs' / '_ext'))
  rows = methods_table.rows()
  assert [call for call, _, _ in rows] == [
      f'{{func}}`aj.{name} <anytime_jax.{name}>`' for name in aj.METHODS]
  for (call, params, reference), method in zip(rows, aj.METHODS.values()):
    own = [p for p in inspect.signature(method.factory).parameters
           if p not in methods_table.COMMON]
    assert [p.split(' ')[0].strip('`') for p in params] == own, call
    assert all(p.split(': ', 1)[1] for p in params), call  # every one described
    assert reference and '``' not in ' '.join(params), call  # Markdown, not reST
  assert methods_table.args_section('Args:\n  c: the radius,\n    in units.\n') == {
      'c': 'the radius, in units.'}
