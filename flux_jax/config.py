"""Config files by path: the recipes shipped with flux_jax, and loading any config file.

Configs are code (`get_config(arg) -> ConfigDict`, big_vision style) that the library
never imports: entry points take `--config PATH[:arg]` (ml_collections' config flag) and
programs call `load`. The repository's `configs/` directory is installed with the package
as `flux_jax.configs` (setup.py), so `recipe('synthetic_demo.py')` names the same file in
a checkout and in a wheel, and config files import their shared pieces as
`flux_jax.configs.common` wherever they are loaded from.
"""

from __future__ import annotations

import importlib.util
import os
import types

import ml_collections

RECIPES = 'flux_jax.configs'  # the package the repository's configs/ is installed as


def recipes_dir() -> str:
  """The directory of the shipped config files (found without importing them)."""
  spec = importlib.util.find_spec(RECIPES)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f'{RECIPES} is not installed: install flux_jax with pip '
                            '(`pip install .` or `pip install -e .`), which ships configs/')
  return list(spec.submodule_search_locations)[0]


def recipe(name: str) -> str:
  """Path of a shipped config, e.g. `recipe('synthetic_demo.py')`; a ':arg' suffix stays."""
  name, sep, arg = name.partition(':')
  if not name.endswith('.py'):
    name += '.py'
  path = os.path.join(recipes_dir(), name)
  if not os.path.isfile(path):
    shipped = sorted(f for f in os.listdir(recipes_dir()) if f.endswith('.py') and
                     not f.startswith('_'))
    raise FileNotFoundError(f'no config {name!r} in {recipes_dir()}; shipped: {shipped}')
  return path + sep + arg


def load_module(path: str) -> types.ModuleType:
  """The config file at `path` as a module (for its `get_config` and constants)."""
  path = os.path.expanduser(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path} does not exist')
  name = 'flux_jax_config_' + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load(spec: str) -> ml_collections.ConfigDict:
  """`get_config(arg)` of a config given as `--config` takes it: 'PATH[:arg]', or the
  name of a shipped recipe ('synthetic_demo[:arg]')."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(os.path.expanduser(path)) and os.sep not in path:
    path = recipe(path)
  module = load_module(path)
  if not hasattr(module, 'get_config'):
    raise ValueError(f'config file {path} defines no get_config(arg)')
  return module.get_config(arg or None)
