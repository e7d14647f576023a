"""Builds the documentation from a copy of the sources: nothing is written into docs/.

    python docs/build.py OUT [sphinx-build options, e.g. -q or -j auto]

Copies docs/ into a temporary directory beside links to the rest of the repository, runs
``sphinx-build -W -b html`` there (autosummary's stubs and the figures land in the copy and its
doctree directory, so two builds at once do not collide), writes the site to OUT, then checks it:
no page may load a script or stylesheet from the network. Exits non-zero on any warning.
"""

from __future__ import annotations

import argparse
import html.parser
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
SKIP = shutil.ignore_patterns('_build', '_autosummary', '__pycache__', '*.pyc')


class _Remote(html.parser.HTMLParser):
  """Collects the remote scripts and stylesheets a page loads."""

  def __init__(self):
    super().__init__()
    self.found: list[str] = []

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    rel = (attrs.get('rel') or '').split()
    if tag == 'script':
      url = attrs.get('src')
    elif tag == 'link' and ({'stylesheet', 'preload', 'modulepreload', 'icon'} & set(rel)):
      url = attrs.get('href')
    else:
      return
    if url and url.startswith(('http://', 'https://', '//')):
      self.found.append(f'<{tag}> {url}')


def remote_assets(site: pathlib.Path) -> dict[str, list[str]]:
  """Every page of the site that loads a script or stylesheet from the network, and what."""
  found = {}
  for page in sorted(site.rglob('*.html')):
    parser = _Remote()
    parser.feed(page.read_text(errors='replace'))
    if parser.found:
      found[str(page.relative_to(site))] = parser.found
  return found


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('out', type=pathlib.Path, help='where the site goes (e.g. build/docs)')
  args, sphinx_args = parser.parse_known_args(argv)
  out = args.out.resolve()
  if out == DOCS or DOCS in out.parents:
    parser.error(f'{args.out} is inside docs/: put the site elsewhere (e.g. build/docs)')
  with tempfile.TemporaryDirectory(prefix='anytime-jax-docs-') as tmp:
    shadow = pathlib.Path(tmp) / 'repository'
    shadow.mkdir()
    for entry in ROOT.iterdir():  # the repository as the pages see it, ../ included
      if entry.name != DOCS.name and not entry.name.startswith('.'):
        (shadow / entry.name).symlink_to(entry)
    shutil.copytree(DOCS, shadow / DOCS.name, ignore=SKIP)
    env = {**os.environ, 'ANYTIME_JAX_DOCS_COPY': '1', 'PYTHONDONTWRITEBYTECODE': '1'}
    command = [sys.executable, '-m', 'sphinx', '-W', '--keep-going', '-b', 'html',
               '-d', str(pathlib.Path(tmp) / 'doctrees'), *sphinx_args,
               str(shadow / DOCS.name), str(out)]
    # Sphinx's messages name the copy's files: name the sources instead.
    with subprocess.Popen(command, env=env, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as process:
      assert process.stdout is not None
      for line in process.stdout:
        sys.stdout.write(line.replace(str(shadow / DOCS.name), str(DOCS)))
        sys.stdout.flush()
    status = process.returncode
  if status:
    return status
  remote = remote_assets(out)
  if remote:
    for page, urls in remote.items():
      print(f'{page} loads from the network: {", ".join(urls)}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
