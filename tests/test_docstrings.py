"""Every public factory documents each of its arguments and cites its sources (issue #37).

The methods guide's hyperparameter table is generated from the ``Args:`` sections, so each
parameter of a factory's signature must be its own entry (a line ``  name: ...`` in the
cleaned docstring), none may be grouped (``a, b: as in ...``) and none may name a parameter
the signature lacks. Every factory also states what it returns and what it is from
(``Returns:`` and ``References:``). The docstrings are only parsed: no JAX computation.
"""

import inspect
import re

import pytest

import anytime_jax as aj
from anytime_jax import solvers

# Google-style section headers (as Sphinx's napoleon reads them), at column 0 once cleaned.
SECTIONS = ('Args', 'Arguments', 'Parameters', 'Keyword Args', 'Returns', 'Return', 'Yields',
            'Raises', 'References', 'Example', 'Examples', 'Note', 'Notes', 'Warning',
            'Warnings', 'See Also', 'Attributes', 'Todo')
HEADER = re.compile(r'^(%s):\s*$' % '|'.join(SECTIONS))
ENTRY = re.compile(r'^  (\*{0,2}[A-Za-z_]\w*)(?: \([^)]*\))?:(?: .*)?$')

# The factories of combinations: every registered method, every public function returning an
# optax transformation (so a new one is checked without being listed here), and the others
# issue #37 names.
PUBLIC = [getattr(aj, name) for name in aj.__all__]
TRANSFORMS = [f for f in PUBLIC if inspect.isfunction(f)
              and 'GradientTransformation' in str(inspect.signature(f).return_annotation)]
NAMED = [aj.osgd, aj.sgd_tail, aj.gram_weighting, aj.amortize, aj.accumulate_exits,
         aj.gradient_equilibrium]
FACTORIES = list({f.__name__: f for f in [*(m.factory for m in aj.METHODS.values()),
                                           *TRANSFORMS, *NAMED]}.values())
# The inner pieces a user builds a combination from (anytime_jax.solvers).
SOLVERS = [getattr(solvers, name) for name in solvers.__all__
           if inspect.isfunction(getattr(solvers, name))]


def sections(doc: str) -> dict[str, list[str]]:
  """The cleaned docstring's sections by header, each its lines up to the next unindented one."""
  found: dict[str, list[str]] = {}
  current = None
  for line in doc.splitlines():
    header = HEADER.match(line)
    if header:
      current = header.group(1)
      assert current not in found, f'section {current}: appears twice'
      found[current] = []
    elif line.strip() and not line.startswith(' '):
      current = None  # prose (or a section napoleon does not know) ends the section
    elif current is not None:
      found[current].append(line)
  return found


def documented_arguments(args: list[str]) -> list[str]:
  """The names of an ``Args:`` section's entries, in order; every entry its own line."""
  names = []
  for line in args:
    if not line.strip() or line.startswith('   '):
      continue  # blank, or an entry's continuation (indented further)
    entry = ENTRY.match(line)
    assert entry, f'Args: {line.strip()!r} is not one "name: description" entry'
    names.append(entry.group(1).lstrip('*'))
  return names


def check(function) -> None:
  name = function.__name__
  doc = inspect.getdoc(function)
  assert doc, f'{name} has no docstring'
  lines = doc.splitlines()
  assert lines[0].strip() and (len(lines) == 1 or not lines[1].strip()), (
      f'{name}: the docstring must open with a one-line summary, then a blank line')
  found = sections(doc)
  parameters = [p.name for p in inspect.signature(function).parameters.values()]
  if parameters:
    assert 'Args' in found, f'{name} has no Args: section'
  else:
    assert 'Args' not in found, f'{name} takes no arguments but has an Args: section'
  documented = documented_arguments(found.get('Args', []))
  duplicated = sorted({n for n in documented if documented.count(n) > 1})
  assert not duplicated, f'{name}: documented twice in Args: {duplicated}'
  missing = [p for p in parameters if p not in documented]
  assert not missing, f'{name}: Args does not document {missing}'
  unknown = [p for p in documented if p not in parameters]
  assert not unknown, f'{name}: Args documents {unknown}, which the signature lacks'
  assert documented == parameters, f'{name}: Args is not in the signature\'s order'
  for section in ('Returns', 'References'):
    assert section in found and any(line.strip() for line in found[section]), (
        f'{name} has no (or an empty) {section}: section')


def test_the_factories_are_found():
  names = {f.__name__ for f in FACTORIES}
  assert set(aj.METHODS) <= names
  assert {f.__name__ for f in NAMED} <= names
  assert {'box_qp', 'min_norm_weights', 'nash_mtl_weights', 'cagrad_weights'} <= {
      f.__name__ for f in SOLVERS}


@pytest.mark.parametrize('factory', FACTORIES, ids=[f.__name__ for f in FACTORIES])
def test_factory_documents_every_argument_and_its_sources(factory):
  check(factory)


@pytest.mark.parametrize('function', SOLVERS, ids=[f.__name__ for f in SOLVERS])
def test_solver_documents_every_argument_and_its_sources(function):
  check(function)


GOOD = '''One line.

  Prose.

  Args:
    a: the first.
    b: the second, over
      two lines.

  Returns:
    Something.

  References:
    * Someone. *Something*. 2020.
  '''


def _function(doc, parameters='a, b'):
  namespace: dict = {}
  exec(f'def f({parameters}):\n  pass', namespace)  # pylint: disable=exec-used
  namespace['f'].__doc__ = doc
  return namespace['f']


def test_the_check_accepts_a_complete_docstring():
  check(_function(GOOD))


@pytest.mark.parametrize('doc,parameters,complaint', [
    (GOOD.replace('    b: the second, over\n      two lines.\n', ''), 'a, b', "document ['b']"),
    (GOOD.replace('    a: the first.\n', '    a, b: the first.\n'), 'a, b', 'is not one'),
    (GOOD, 'a, b, c', "document ['c']"),
    (GOOD, 'a', "lacks"),
    (GOOD.replace('    a: the first.\n    b: the second, over\n      two lines.\n',
                  '    b: the second.\n    a: the first.\n'), 'a, b', 'order'),
    (GOOD.replace('  References:\n    * Someone. *Something*. 2020.\n', ''), 'a, b',
     'References'),
    (GOOD.replace('  Returns:\n    Something.\n', ''), 'a, b', 'Returns'),
    (GOOD.replace('One line.', 'Two\n  lines.'), 'a, b', 'one-line summary'),
    (GOOD.replace('  Args:', '  Arguments follow.'), 'a, b', 'no Args'),
])
def test_the_check_refuses_what_the_issue_forbids(doc, parameters, complaint):
  with pytest.raises(AssertionError, match=re.escape(complaint)):
    check(_function(doc, parameters))
