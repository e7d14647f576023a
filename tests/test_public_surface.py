"""The public surface: what `anytime_jax` exports, the old paths kept for one release, and layering."""

import ast
import importlib
import pathlib
import sys

import pytest

import anytime_jax as aj

PACKAGE = pathlib.Path(aj.__file__).parent


def test_every_public_name_resolves_and_implementation_modules_are_private():
  for module in (aj, aj.solvers, aj.gram):
    for name in module.__all__:
      obj = getattr(module, name)
      home = getattr(obj, '__module__', None) or ''
      assert not home.startswith('anytime_jax.') or home.startswith(
          ('anytime_jax._src.', 'anytime_jax.models')), (module.__name__, name, home)


@pytest.mark.parametrize('old, name, new', [
    ('anytime_jax.combinations', 'box_qp', aj.solvers.box_qp),
    ('anytime_jax.combinations', 'pcgrad', aj.pcgrad),
    ('anytime_jax.osgd', 'gram_schmidt_coefficients', aj.solvers.gram_schmidt_coefficients),
    ('anytime_jax.staged', 'staged_exit_jacobian', aj.staged_exit_jacobian),
    ('anytime_jax.staged', 'linen_stages', aj.linen_stages),
    ('anytime_jax.nnx_support', 'create_nnx', aj.create_nnx),
    ('anytime_jax.anytime', 'early_exit', aj.early_exit),
    ('anytime_jax.training', 'make_train_step', aj.make_train_step),
    ('anytime_jax.conv', 'conv_general_dilated', aj.models.conv.conv_general_dilated),
])
def test_an_old_module_path_still_works_for_one_release_and_names_the_new_one(old, name, new):
  module = importlib.import_module(old)
  with pytest.warns(DeprecationWarning, match=f'{old}.{name} is deprecated .* removed in '
                                              'anytime-jax 0.4'):
    assert getattr(module, name) is new
  with pytest.raises(AttributeError):
    getattr(module, 'no_such_name')


def test_config_is_renamed_conflict_free_with_an_alias_for_one_release():
  with pytest.warns(DeprecationWarning, match='use anytime_jax.conflict_free'):
    assert aj.config is aj.conflict_free
  assert 'config' not in aj.__all__


def _imports(path: pathlib.Path) -> set[str]:
  tree = ast.parse(path.read_text())
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      found.update(f'{node.module}.{alias.name}' for alias in node.names)
    elif isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
  return found


def test_the_engine_and_the_methods_do_not_import_the_model_zoo():
  for path in (PACKAGE / '_src').rglob('*.py'):
    if path.name == 'training.py':  # create_train_state initializes our networks
      continue
    zoo = {name for name in _imports(path) if name.startswith('anytime_jax.models')}
    assert not zoo, (path, zoo)


def test_the_methods_read_the_core_never_each_other():
  for path in (PACKAGE / '_src' / 'methods').glob('*.py'):
    others = {name for name in _imports(path) if name.startswith('anytime_jax._src.methods')}
    assert not others, (path, others)


def test_no_old_module_file_is_left_beside_the_aliases():
  for old in ('combinations', 'osgd', 'staged', 'nnx_support', 'anytime', 'training', 'conv'):
    assert not (PACKAGE / f'{old}.py').exists()
    assert sys.modules[f'anytime_jax.{old}'].__doc__.startswith('Deprecated')


@pytest.mark.parametrize('name', [n for n, m in aj.METHODS.items() if not m.granular])
def test_a_uniform_weighting_warns_that_granularity_changes_nothing(name):
  options = {'num_exits': 2} if aj.METHODS[name].needs_num_exits else {}
  with pytest.warns(DeprecationWarning, match='granularity changes nothing'):
    aj.METHODS[name].factory(granularity='global', **options)


def test_every_module_is_in_a_package_a_wheel_ships():
  import setuptools  # pylint: disable=g-import-not-at-top
  packages = set(setuptools.find_packages(str(PACKAGE.parent), include=['anytime_jax*']))
  folders = {'.'.join(path.parent.relative_to(PACKAGE.parent).parts)
             for path in PACKAGE.rglob('*.py')}
  assert folders <= packages, folders - packages


def test_every_method_module_is_loaded_and_every_registered_method_is_public():
  for path in (PACKAGE / '_src' / 'methods').glob('*.py'):
    if path.stem != '__init__':  # a family's module the package never imports registers nothing
      assert f'anytime_jax._src.methods.{path.stem}' in sys.modules, path
  for name, method in aj.METHODS.items():
    assert name in aj.__all__ and getattr(aj, name) is method.factory, name
