"""Figures drawn by scripts kept beside the pages, run on every build; the page shows the image.

Every ``figures/*.py`` under the documentation's source directory is a standalone program that
draws one figure and saves it to the path given as its only argument (``python
docs/figures/methods.py out.svg``). When the build starts, this extension runs them all in
``figure_scripts_workers`` processes (default 1: one after another, sharing their imports, while
Sphinx reads the pages; working directory: the repository, ``MPLBACKEND=Agg``) and writes their
images into the build's doctree directory, never into the source tree. A script therefore must
not change global state another relies on (``jax.config``). A page shows one with::

    ```{figure-script} methods.py
    :alt: what the image shows, for readers who cannot see it

    The caption (Markdown). A link to the script follows it.
    ```

A script that fails is an error on its page, with the end of its output, and a script no page
shows is a warning: either fails a build with ``-W`` (docs/build.py always passes it). Pages that
show a figure are read again on every build, so their images are the current scripts' output.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import threading
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx import addnodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

logger = logging.getLogger(__name__)
FORMAT = 'svg'
RUNNER = pathlib.Path(__file__).with_name('run_figures.py')


def _scripts(app: Sphinx) -> dict[str, pathlib.Path]:
  folder = pathlib.Path(app.srcdir) / app.config.figure_scripts_dir
  return {p.name: p for p in sorted(folder.glob('*.py')) if not p.name.startswith('_')}


def _reading_order(app: Sphinx) -> list[str]:
  """The scripts in the order Sphinx reads the pages that show them (by page name)."""
  pattern = re.compile(r'^[`:]{3,}\{figure-script\}\s+(\S+)', re.M)
  srcdir = pathlib.Path(app.srcdir)
  pages = sorted((p for p in srcdir.rglob('*.md') if not p.relative_to(srcdir).parts[0]
                  .startswith(('_', '.'))), key=lambda p: p.relative_to(srcdir).with_suffix(''))
  names: list[str] = []
  for page in pages:
    for name in pattern.findall(page.read_text(encoding='utf-8')):
      if name not in names:
        names.append(name)
  return names


def _start(jobs: list[tuple[str, pathlib.Path, pathlib.Path]], cwd: pathlib.Path,
           futures: dict[str, concurrent.futures.Future]) -> threading.Thread:
  """Runs ``jobs`` (name, script, image) in one process, in order; resolves each one's future."""

  def follow():
    path = os.pathsep.join(filter(None, [str(cwd), os.environ.get('PYTHONPATH')]))  # this library
    env = {**os.environ, 'MPLBACKEND': 'Agg', 'PYTHONDONTWRITEBYTECODE': '1', 'PYTHONPATH': path}
    command = [sys.executable, str(RUNNER)]
    for _, script, image in jobs:
      command += [str(script), str(image.with_suffix(f'.draft{image.suffix}'))]
    with tempfile.TemporaryFile('w+') as log:
      process = subprocess.Popen(command, cwd=cwd, env=env, text=True, stdout=subprocess.PIPE,
                                 stderr=log)
      assert process.stdout is not None
      done = 0
      for line, (name, _, image) in zip(process.stdout, jobs):  # one report a script, in order
        result = json.loads(line)
        if result['ok']:
          os.replace(image.with_suffix(f'.draft{image.suffix}'), image)
        futures[name].set_result((result['ok'], result['output']))
        done += 1
      process.wait()
      log.seek(0)
      for name, _, _ in jobs[done:]:  # the process died before it got to them
        futures[name].set_result((False, f'the figure process exited {process.returncode}:\n'
                                  f'{log.read()[-3000:]}'))

  thread = threading.Thread(target=follow, name='figure-scripts', daemon=True)
  thread.start()
  return thread


class _Jobs:
  """This build's scripts (started by its process: sphinx-build -j forks readers)."""
  scripts: dict[str, pathlib.Path] = {}
  images: dict[str, pathlib.Path] = {}
  futures: dict[str, concurrent.futures.Future] = {}
  threads: list[threading.Thread] = []
  pid = 0
  cwd = pathlib.Path()


def start_scripts(app: Sphinx) -> None:
  """Starts the figure scripts: ``figure_scripts_workers`` processes, each running its share."""
  if not hasattr(app.env, 'figure_script_pages'):
    app.env.figure_script_pages = {}  # type: ignore[attr-defined]
  _Jobs.scripts = _scripts(app)
  folder = pathlib.Path(app.doctreedir) / 'figure_scripts'
  folder.mkdir(parents=True, exist_ok=True)
  _Jobs.images = {name: folder / f'{p.stem}.{FORMAT}' for name, p in _Jobs.scripts.items()}
  _Jobs.cwd = pathlib.Path(app.confdir).parent  # the repository
  _Jobs.pid = os.getpid()
  _Jobs.futures = {name: concurrent.futures.Future() for name in _Jobs.scripts}
  order = [n for n in _reading_order(app) if n in _Jobs.scripts]  # pages wait on them in turn
  order += [n for n in _Jobs.scripts if n not in order]
  workers = max(1, min(app.config.figure_scripts_workers, len(order)))
  shares = [order[i::workers] for i in range(workers)]
  _Jobs.threads = [_start([(n, _Jobs.scripts[n], _Jobs.images[n]) for n in share], _Jobs.cwd,
                          _Jobs.futures) for share in shares if share]


def _run_alone(name: str) -> tuple[bool, str]:
  """One script in a process of its own (a forked reader cannot wait on its parent's threads)."""
  future: concurrent.futures.Future = concurrent.futures.Future()
  _start([(name, _Jobs.scripts[name], _Jobs.images[name])], _Jobs.cwd, {name: future}).join()
  return future.result()


class FigureScript(SphinxDirective):
  """``{figure-script} NAME.py``: the image the script draws, its caption and a link to it."""

  required_arguments = 1
  has_content = True
  option_spec = {'alt': directives.unchanged_required,
                 'width': directives.length_or_percentage_or_unitless}

  def run(self) -> list[nodes.Node]:
    name = self.arguments[0]
    if name not in _Jobs.futures:
      raise self.error(f'figure-script: no script {name!r} in {self.config.figure_scripts_dir}/ '
                       f'(there are: {", ".join(sorted(_Jobs.futures))})')
    if os.getpid() != _Jobs.pid and not _Jobs.futures[name].done():
      ok, output = _run_alone(name)
    else:
      ok, output = _Jobs.futures[name].result()
    if not ok:
      raise self.error(f'figure-script: {self.config.figure_scripts_dir}/{name} failed:\n'
                       f'{output[-3000:]}')
    self.env.note_dependency(str(_Jobs.scripts[name]))
    pages = self.env.figure_script_pages  # type: ignore[attr-defined]
    pages.setdefault(self.env.docname, set()).add(name)

    document_dir = (pathlib.Path(self.env.srcdir) / self.env.docname).parent
    image = nodes.image(uri=os.path.relpath(_Jobs.images[name], document_dir),
                        alt=self.options.get('alt', f'the figure {name} draws'))
    if 'width' in self.options:
      image['width'] = self.options['width']
    figure = nodes.figure('', image, classes=['figure-script'])

    body = nodes.Element()
    self.state.nested_parse(self.content, self.content_offset, body)
    caption = nodes.caption()
    rest = []
    for child in body.children:
      if isinstance(child, nodes.paragraph) and not caption.children:
        caption.extend(child.children)
      else:
        rest.append(child)
    script = f'{self.config.figure_scripts_dir}/{name}'
    if caption.children:
      caption += nodes.Text(' ')
    caption += nodes.Text('Drawn on every build by ')
    caption += addnodes.download_reference(
        '', '', nodes.literal('', f'docs/{script}'), reftarget=f'/{script}', refexplicit=True,
        refdoc=self.env.docname, reftype='download', refdomain='')
    url = self.config.figure_scripts_repository
    if url:
      caption += nodes.Text(' (')
      caption += nodes.reference('', 'in the repository', refuri=f'{url}/docs/{script}')
      caption += nodes.Text(')')
    caption += nodes.Text('.')
    figure += caption
    if rest:
      figure += nodes.legend('', *rest)
    self.set_source_info(figure)
    return [figure]


def reread_figure_pages(app: Sphinx, env: Any, added: set[str], changed: set[str],
                        removed: set[str]) -> list[str]:
  """Pages that show a figure are read again: the scripts ran again."""
  del app, added, changed
  return sorted(set(getattr(env, 'figure_script_pages', {})) - removed)


def purge_page(app: Sphinx, env: Any, docname: str) -> None:
  del app
  getattr(env, 'figure_script_pages', {}).pop(docname, None)


def merge_pages(app: Sphinx, env: Any, docnames: set[str], other: Any) -> None:
  del app, docnames
  env.figure_script_pages = getattr(env, 'figure_script_pages', {})
  env.figure_script_pages.update(getattr(other, 'figure_script_pages', {}))


def check_every_script_shown(app: Sphinx, env: Any) -> None:
  shown = set().union(*getattr(env, 'figure_script_pages', {}).values())
  for name in sorted(set(_Jobs.scripts) - shown):
    logger.warning('figure-script: %s/%s is shown on no page', app.config.figure_scripts_dir,
                   name, type='figure_scripts', subtype='unused')


def setup(app: Sphinx) -> dict[str, Any]:
  app.add_config_value('figure_scripts_dir', 'figures', 'env', str)
  app.add_config_value('figure_scripts_workers', 1, '', int)
  app.add_config_value('figure_scripts_repository', '', 'env', str)
  app.add_directive('figure-script', FigureScript)
  app.connect('builder-inited', start_scripts, priority=100)  # before autosummary's stubs
  app.connect('env-get-outdated', reread_figure_pages)
  app.connect('env-purge-doc', purge_page)
  app.connect('env-merge-info', merge_pages)
  app.connect('env-check-consistency', check_every_script_shown)
  return {'version': '1', 'parallel_read_safe': True, 'parallel_write_safe': True,
          'env_version': 1}
