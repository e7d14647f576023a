"""Sphinx configuration: API reference from docstrings, Markdown pages, figures drawn on build.

Build with ``python docs/build.py OUT`` (from a copy of the sources: nothing is written into
docs/). The site needs no network: MathJax is served from the site itself.
"""

import importlib.util
import os
import pathlib
import shutil
import sys

from sphinx.util import logging

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, os.path.abspath('..'))
sys.path.insert(0, str(DOCS / '_ext'))

project = 'anytime-jax'
author = 'the anytime-jax authors'
copyright = '2026, the anytime-jax authors'  # pylint: disable=redefined-builtin

extensions = [
    'myst_parser',
    'sphinx.ext.autodoc',
    'sphinx.ext.autosummary',
    'sphinx.ext.napoleon',
    'sphinx.ext.mathjax',
    'sphinx.ext.viewcode',
    'figure_scripts',
    'methods_table',
]
myst_enable_extensions = ['dollarmath', 'colon_fence']
myst_heading_anchors = 3
source_suffix = {'.md': 'markdown', '.rst': 'restructuredtext'}
exclude_patterns = ['_build', '**/*.src']
suppress_warnings = ['myst.xref_missing']

autosummary_generate = True
autodoc_typehints = 'description'
autodoc_member_order = 'bysource'
autodoc_default_options = {'members': True, 'show-inheritance': False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

# Figures: docs/figures/*.py, run on every build, their images written into the build's
# doctree directory (docs/_ext/figure_scripts.py); a page shows one with {figure-script}.
REPOSITORY = 'https://github.com/anytime-jax/anytime-jax'
figure_scripts_repository = f'{REPOSITORY}/blob/main'

html_theme = 'sphinx_book_theme'
html_title = 'anytime-jax'
html_theme_options = {'repository_url': REPOSITORY, 'show_toc_level': 2}
html_static_path = ['_static']
html_css_files = ['custom.css']

# MathJax 3 from the site itself (the sphinx-mathjax-offline package's copy), not from a CDN.
mathjax_path = 'mathjax/tex-chtml.js'
MATHJAX_PARTS = ('tex-chtml.js', 'input/tex', 'output/chtml', 'a11y', 'sre', 'ui')


def copy_mathjax(app, exception):
  """Copies the parts of MathJax that tex-chtml.js loads into the site's _static/mathjax."""
  if exception is not None or app.builder.format != 'html':
    return
  spec = importlib.util.find_spec('sphinx-mathjax-offline')
  if spec is None or spec.origin is None:
    raise RuntimeError('MathJax is missing: pip install -e ".[docs]" (sphinx-mathjax-offline)')
  source = pathlib.Path(spec.origin).parent / 'static' / 'mathjax'
  target = pathlib.Path(app.outdir) / '_static' / 'mathjax'
  for part in MATHJAX_PARTS:
    if (source / part).is_dir():
      shutil.copytree(source / part, target / part, dirs_exist_ok=True)
    else:
      (target / part).parent.mkdir(parents=True, exist_ok=True)
      shutil.copyfile(source / part, target / part)


def warn_in_place_build(app):
  """A build straight from docs/ writes docs/_autosummary/ into the sources: say how not to."""
  del app
  if not os.environ.get('ANYTIME_JAX_DOCS_COPY'):  # set by docs/build.py in its copy
    logging.getLogger(__name__).warning(
        'this build writes docs/_autosummary/ into the sources (two builds at once collide): '
        'build with `python docs/build.py OUT`, which builds from a copy')


def setup(app):
  app.connect('builder-inited', warn_in_place_build)
  app.connect('build-finished', copy_mathjax)
