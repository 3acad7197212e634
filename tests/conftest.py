"""Test setup: 8 fake CPU devices for sharding tests, float32 everywhere."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import sys  # noqa: E402

# The PyTorch/numpy references live beside the tests.
sys.path.insert(0, os.path.dirname(__file__))

# make test runs whole files on 2 workers (pytest-xdist --dist loadfile, in collection
# order): the longest files go first, so that no worker is left with one at the end.
_LONGEST_FIRST = ('test_multihost.py', 'test_distill.py', 'test_loop.py', 'test_steps.py',
                  'test_notebooks.py', 'test_aot.py', 'test_train_mode.py', 'test_teacher.py')


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.fspath))
    return _LONGEST_FIRST.index(name) if name in _LONGEST_FIRST else len(_LONGEST_FIRST)
  items.sort(key=rank)  # stable: the order within a file is kept
