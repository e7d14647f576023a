"""``.. methods-table::``: every registered method's hyperparameters, from its docstring.

The table is read from ``anytime_jax.METHODS`` and each factory's signature
(defaults) and ``Args:`` section (meanings), so that adding a method or a
hyperparameter never means writing it twice. Arguments every method shares
(:data:`COMMON`) are described once, under the table.
"""

from __future__ import annotations

import inspect
import re

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

import anytime_jax as aj

COMMON = ('granularity', 'axis_name', 'diagnostics', 'num_exits')


def args_section(doc: str) -> dict[str, str]:
  """``{parameter: description}`` from a Google-style ``Args:`` section (continuations joined)."""
  match = re.search(r'^Args:\n((?:[ \t]+.*\n?|\n)+)', doc, re.M)
  if not match:
    return {}
  entries: dict[str, str] = {}
  name = None
  for line in match.group(1).splitlines():
    entry = re.match(r'^ {2,4}(\*{0,2}\w+): ?(.*)$', line)
    if entry:
      name = entry.group(1).lstrip('*')
      entries[name] = entry.group(2).strip()
    elif name and line.strip():
      entries[name] += ' ' + line.strip()
  return entries


def references(doc: str) -> list[str]:
  """The entries of the ``References:`` section, each with its continuation lines joined."""
  match = re.search(r'^References:\n((?:[ \t]+.*\n?)+)', doc, re.M)
  if not match:
    return []
  entries: list[str] = []
  for line in match.group(1).splitlines():
    item = re.match(r'^\s*[-*]\s+(.*)$', line)
    if item or not entries:
      entries.append((item.group(1) if item else line).strip())
    else:
      entries[-1] += ' ' + line.strip()
  return entries


def to_markdown(text: str) -> str:
  """A docstring's reST inline markup as MyST Markdown (the guide's page is Markdown)."""
  text = re.sub(r':(\w+):`([^`]+)`', r'{\1}`\2`', text)
  return re.sub(r'``([^`]+)``', r'`\1`', text)


def rows() -> list[tuple[str, list[str], str]]:
  """``(call, hyperparameters, reference)`` per registered method, in registration order."""
  out = []
  for name, method in aj.METHODS.items():
    doc = inspect.getdoc(method.factory) or ''
    described = args_section(doc)
    params = [p for p in inspect.signature(method.factory).parameters.values()
              if p.name not in COMMON]
    cells = []
    for p in params:
      default = '' if p.default is inspect.Parameter.empty else f' = {p.default!r}'
      cells.append(f'`{p.name}{default}`: {to_markdown(described.get(p.name, ""))}')
    out.append((f'{{func}}`aj.{name} <anytime_jax.{name}>`', cells,
                to_markdown('; '.join(references(doc)))))
  return out


class MethodsTable(SphinxDirective):
  """Renders :func:`rows` as a MyST list-table (the directive is used from Markdown pages)."""

  def run(self) -> list[nodes.Node]:
    lines = ['```{list-table}', ':header-rows: 1', ':widths: 18 52 30', '',
             '* - method', '  - hyperparameters (default: meaning)', '  - reference']
    for call, params, reference in rows():
      lines.append(f'* - {call}')
      lines += ([f'  - * {params[0]}'] + [f'    * {p}' for p in params[1:]]
                if params else ['  - (none)'])
      lines.append(f'  - {reference}')
    lines.append('```')
    container = nodes.container()
    self.state.nested_parse(StringList(lines), self.content_offset, container)
    return container.children


def setup(app):
  app.add_directive('methods-table', MethodsTable)
  return {'parallel_read_safe': True, 'parallel_write_safe': True}
