"""One compiled forward serves every grid; every parameter has logical axis names."""

import functools

import flax
import jax
import numpy as np

from flux_jax.model import init_params, make_model, param_specs
from flux_jax.tokens import patchify
from flux_jax.xla import CompileCounter


def test_one_compile_serves_many_grids():
  model = make_model(dict(variant='tiny', num_classes=5))
  params = init_params(model, jax.random.key(0))
  forward = jax.jit(functools.partial(model.apply, budget=24, head=1))
  rng = np.random.default_rng(0)
  grids = [(4, 56, 56), (6, 42, 42), (3, 28, 70), (8, 28, 28), (2, 70, 70), (16, 28, 28),
           (5, 42, 28)]
  batches = [patchify(rng.integers(0, 256, (2, t, h, w, 3), dtype=np.uint8), n_max=100)
             for t, h, w in grids]
  batches = jax.device_put(batches)
  outputs = []
  with CompileCounter() as counter:
    for tokens in batches:
      logits, aux = forward({'params': params}, tokens)
      outputs.append(np.asarray(logits))
  assert counter.count == 1
  assert all(np.isfinite(o).all() for o in outputs)
  # Different grids really gave different inputs and outputs.
  assert len({o.tobytes() for o in outputs}) == len(grids)


def test_every_parameter_has_logical_axes():
  model = make_model(dict(variant='tiny', num_classes=5))
  specs = flax.traverse_util.flatten_dict(param_specs(model))
  shapes = flax.traverse_util.flatten_dict(
      jax.eval_shape(lambda: init_params(model, jax.random.key(0))))
  assert set(specs) == set(shapes)
  for path, spec in specs.items():
    assert len(spec) == len(shapes[path].shape), path
    assert all(isinstance(name, str) for name in spec), (path, spec)
