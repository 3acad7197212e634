r"""Sweeps: one `flux_jax.cli.train` command per point of a sweep file.

  python -m flux_jax.cli.sweep configs/sweeps/synthetic_demo_lr.py[:arg] --workdir BASE \
      [--launch=print|local] [--only=0,3] [--prefix='sbatch launch/slurm_gpu.sbatch']

A sweep file defines `get_sweep(arg=None)` returning `Sweep(config, points)`: the base
config as `--config` takes it (`configs/x.py[:arg]`) and a list of override dicts
{'optim.lr': 1e-3, 'train.budgets': (256, 128)}, each becoming `--config.key=value`
flags. Every point of the sweep is checked against the config that `flux_jax.cli.train` would
load, through the same ml_collections flag parser, before anything is printed or run.
Point i trains in BASE/<i>_<key=value,...>, a name made from its overrides only, so a
rerun resumes the same workdirs.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import itertools
import os
import re
import shlex
import subprocess
from typing import Any, Mapping, NamedTuple, Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

MAIN = ('-m', 'flux_jax.cli.train')
DEFAULT_PREFIX = '.venv/bin/python'
_MAX_NAME = 100  # characters of a point's directory name before it is hashed
_UNSAFE = re.compile(r'[^A-Za-z0-9._+-]+')


class Sweep(NamedTuple):
  config: str  # base config as --config takes it: configs/x.py[:arg]
  points: list[dict[str, Any]]  # override dicts, dotted config keys


def product(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Every combination of the values in `grid`, the first key varying slowest."""
  keys = list(grid)
  return [dict(zip(keys, values)) for values in itertools.product(*grid.values())]


def load_sweep(spec: str) -> Sweep:
  """Runs `get_sweep(arg)` of a sweep file `path.py[:arg]` and checks its shape."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ValueError(f'sweep file {path} does not exist')
  module_spec = importlib.util.spec_from_file_location('_flux_sweep', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'sweep file {path} defines no get_sweep(arg=None)')
  sweep = module.get_sweep(arg) if arg else module.get_sweep()
  if not (isinstance(sweep, tuple) and len(sweep) == 2 and isinstance(sweep[0], str)
          and isinstance(sweep[1], list)
          and all(isinstance(p, dict) for p in sweep[1])):
    raise ValueError(f'sweep file {path}: get_sweep must return Sweep(config: str, '
                     f'points: list of dicts), got {sweep!r}')
  for i, point in enumerate(sweep[1]):
    for key in point:
      if not isinstance(key, str):
        raise ValueError(f'sweep file {path}, point {i}: key {key!r} is not a dotted str')
  return Sweep(*sweep)


def flag_value(value: Any) -> str:
  """The text after `--config.key=` that ml_collections parses back into `value`."""
  if isinstance(value, bool):
    return 'true' if value else 'false'
  if isinstance(value, (tuple, list)):
    items = ','.join(repr(v) for v in value)
    return f'({items},)' if len(value) == 1 else f'({items})'
  return str(value)  # floats print the shortest text that parses back to them


def override_flags(point: Mapping[str, Any]) -> list[str]:
  return [f'--config.{key}={flag_value(value)}' for key, value in point.items()]


def parse_config(config: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """The config `flux_jax.cli.train --config CONFIG OVERRIDES...` would see."""
  argv = ['flux_jax.cli.train', '--config', config, *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values, lock_config=True,
                                  sys_argv=argv)
  values(argv)
  config = values.config
  if not isinstance(config, ml_collections.ConfigDict):
    config.to_dict()  # a file that failed to load gives a stand-in raising its error on access
  return config


def _compatible(value: Any, current: Any) -> bool:
  """ConfigDict's type rules, with lists for tuples: an int may set a float field."""
  if isinstance(current, bool) or isinstance(value, bool):
    return type(value) is type(current)
  if isinstance(current, float):
    return isinstance(value, (int, float))
  if isinstance(current, tuple):
    return isinstance(value, (tuple, list)) and (
        not current or all(_compatible(v, current[0]) for v in value))
  return isinstance(value, type(current))


def _lookup(config: ml_collections.ConfigDict, key: str) -> tuple[Any, type]:
  """(value, type) of the field `key`; a None field's type is its placeholder's."""
  node, kind = config, type(config)
  for part in key.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise KeyError(key)
    node, kind = node[part], node.get_type(part)
  return node, kind


def validate(sweep: Sweep, where: str) -> None:
  """Raises ValueError naming `where`, the point and the key of the first bad override."""
  try:
    base = parse_config(sweep.config)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{where}: base config {sweep.config!r} does not load: {e}') from e
  for i, point in enumerate(sweep.points):
    for key, value in point.items():
      bad = f'{where}, point {i}: --config.{key}'
      try:
        current, kind = _lookup(base, key)
      except KeyError:
        raise ValueError(f'{bad}: no such key in {sweep.config}') from None
      if isinstance(current, ml_collections.ConfigDict):
        raise ValueError(f'{bad}: is a block; override its fields ({sorted(current)})')
      if current is None:
        if kind is type(None):
          raise ValueError(f'{bad}: the config holds an untyped None, which the command '
                           'line cannot override; make the field configs.common.optional'
                           '(type) in the config')
        current = kind()  # a typed placeholder: its type decides what fits
      if not _compatible(value, current):
        raise ValueError(f'{bad}: {value!r} ({type(value).__name__}) does not fit the '
                         f"config's {current!r} ({type(current).__name__})")
    try:
      parsed = parse_config(sweep.config, override_flags(point))
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'{where}, point {i}: {e}') from e
    for key, value in point.items():
      want = tuple(value) if isinstance(value, list) else value
      got, _ = _lookup(parsed, key)
      if got != want:
        raise ValueError(f'{where}, point {i}: --config.{key}={flag_value(value)} parses to '
                         f'{got!r}, not {value!r}')


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
  """Each dotted key's shortest suffix that no other key of the sweep ends with."""
  out = {}
  for key in keys:
    parts = key.split('.')
    for n in range(1, len(parts) + 1):
      short = '.'.join(parts[-n:])
      if not any(other != key and ('.' + other).endswith('.' + short) for other in keys):
        break
    out[key] = short
  return out


def _name_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return '-'.join(_name_value(v) for v in value)
  return _UNSAFE.sub('-', flag_value(value)).strip('-')


def point_name(index: int, point: Mapping[str, Any], short: Mapping[str, str]) -> str:
  """`<index>_<key=value,...>`; long names keep a prefix and a hash of the whole."""
  name = f'{index}_' + ','.join(f'{short[k]}={_name_value(v)}' for k, v in point.items())
  if len(name) > _MAX_NAME:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f'{name[:_MAX_NAME - 11]}-{digest}'
  return name


def commands(sweep: Sweep, base_workdir: str, prefix: Sequence[str] = (DEFAULT_PREFIX,),
             only: Sequence[int] | None = None) -> list[tuple[int, list[str]]]:
  """(point index, argv) for each selected point, in sweep order."""
  indices = range(len(sweep.points)) if only is None else only
  for i in indices:
    if not 0 <= i < len(sweep.points):
      raise ValueError(f'--only {i}: the sweep has points 0..{len(sweep.points) - 1}')
  short = _short_keys(list(dict.fromkeys(k for p in sweep.points for k in p)))
  base = base_workdir.rstrip('/')
  return [(i, [*prefix, *MAIN, '--config', sweep.config, '--workdir',
               f'{base}/{point_name(i, sweep.points[i], short)}',
               *override_flags(sweep.points[i])]) for i in indices]


def run_locally(cmds: Sequence[tuple[int, list[str]]]) -> None:
  """Runs the commands one after another here; stops at the first that fails."""
  for i, argv in cmds:
    print(shlex.join(argv), flush=True)
    code = subprocess.run(argv, check=False).returncode
    if code:
      raise SystemExit(f'sweep point {i} exited with {code}; later points not run')


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m flux_jax.cli.sweep', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('sweep', help='sweep file, path.py[:arg]')
  parser.add_argument('--workdir', required=True, help='base; point i runs in BASE/<i>_...')
  parser.add_argument('--launch', choices=('print', 'local'), default='print',
                      help='print one command per line (default) or run them here in turn')
  parser.add_argument('--only', default=None,
                      help='comma-separated point indices, e.g. 0,3 (default: all)')
  parser.add_argument('--prefix', default=DEFAULT_PREFIX,
                      help='what precedes `-m flux_jax.cli.train ...`: the interpreter, or a '
                      "launcher taking python arguments, e.g. 'sbatch --nodes=4 "
                      "launch/slurm_gpu.sbatch' or 'launch/tpu_pod.sh --name N --zone Z "
                      "--type T --'")
  args = parser.parse_args(argv)
  only = None
  if args.only is not None:
    try:
      only = [int(i) for i in args.only.split(',')]
    except ValueError:
      parser.error(f'--only={args.only!r} is not comma-separated point indices')
  try:
    sweep = load_sweep(args.sweep)
    validate(sweep, f'sweep file {args.sweep}')
    cmds = commands(sweep, args.workdir, shlex.split(args.prefix), only)
  except ValueError as e:
    parser.exit(2, f'error: {e}\n')
  if args.launch == 'print':
    for _, cmd in cmds:
      print(shlex.join(cmd))
  else:
    run_locally(cmds)


if __name__ == '__main__':
  main()
