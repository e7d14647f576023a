"""Sphinx configuration: API reference from docstrings, Markdown pages, guides executed on build."""

import os
import sys

sys.path.insert(0, os.path.abspath('..'))

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
    'matplotlib.sphinxext.plot_directive',
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

# Guides run their code on every build: a failing example fails the build (-W).
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [('png', 110)]
plot_rcparams = {'figure.figsize': (7, 3.4), 'figure.autolayout': True}
plot_working_directory = os.path.abspath('..')

html_theme = 'sphinx_book_theme'
html_title = 'anytime-jax'
html_theme_options = {'repository_url': 'https://github.com/anytime-jax/anytime-jax',
                      'show_toc_level': 2}

# Offline previews: point ANYTIME_JAX_MATHJAX at a local MathJax (e.g. Debian's libjs-mathjax,
# file:///usr/share/javascript/mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML); by default
# Sphinx loads MathJax from its CDN.
if os.environ.get('ANYTIME_JAX_MATHJAX'):
  mathjax_path = os.environ['ANYTIME_JAX_MATHJAX']
  # MathJax 2 (Debian's) reads its own configuration: process only what MyST marks as maths.
  myst_update_mathjax = False
  mathjax2_config = {'tex2jax': {'inlineMath': [['\\(', '\\)']],
                                 'displayMath': [['\\[', '\\]']],
                                 'processRefs': False, 'processEnvironments': False}}
