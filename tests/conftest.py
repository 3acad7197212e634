"""Test setup: 8 fake CPU devices for sharding tests, float32 everywhere."""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import sys  # noqa: E402

# The PyTorch/numpy references live beside the tests.
sys.path.insert(0, os.path.dirname(__file__))
