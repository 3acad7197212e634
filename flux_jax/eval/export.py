"""One `jax.export` artifact per token budget: TokenBatch arrays in, logits out.

An artifact is a directory:

  DIR/model.jaxexport   `Exported.serialize()` bytes of the forward at one budget and head
  DIR/contract.json     the input contract below, machine-readable, and the class names

Input contract (the TokenBatch of DESIGN.md 2, four positional arrays):

  patches  uint8 [b, N_max, P]  RGB pixels 0-255 of each token, P = tubelet*p*p*3 ordered
                                (kt, py, px, rgb), rgb fastest; the artifact normalizes them
  coords   int32 [b, N_max, 3]  (t, h, w) of each token in its sample's token grid
  grid     int32 [b, 3]         (T, Hp, Wp) of each sample (T counts tubelets)
  valid    bool  [b, N_max]     False on padding

Valid tokens come first, in raster order (t, h, w); padding follows. `b` is symbolic:
one artifact serves any batch size (XLA compiles once per size at the first call).
N_max is fixed at export; any grid of at most N_max tokens runs through the same
artifact, and samples of one batch may have different grids. `patchify(video,
patch_size=p, tubelet_size=kt, n_max=N_max)` builds these arrays from uint8 frames
`[B, T, H, W, 3]`. The output is float32 logits `[b, num_classes]`; the artifact keeps
`min(budget, valid tokens)` tokens by the model's selector and runs one fixed head.

The params are baked into the artifact as constants: it is self-contained (one file runs
without flux_jax, its config or an orbax checkpoint, through `jax.export.deserialize`)
and cannot be paired with the wrong weights. The cost is a copy of the weights per
budget, and jax's flatbuffer serialization caps an artifact near 2 GB (FluxViT-B's
float32 params are 0.4 GB).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from flux_jax.model.fluxvit import FluxViT
from flux_jax.tokens.token_batch import TokenBatch

FORMAT = 'flux_jax.cli.export/1'
EXPORTED = 'model.jaxexport'
CONTRACT = 'contract.json'
INPUTS = ('patches', 'coords', 'grid', 'valid')
_MEANING = {
    'patches': 'RGB pixels 0-255 per token, vector order (kt, py, px, rgb), rgb fastest',
    'coords': '(t, h, w) of each token in its grid; valid tokens first, raster order',
    'grid': '(T, Hp, Wp) token grid of each sample, T in tubelets',
    'valid': 'False on padding slots',
}


@dataclasses.dataclass(frozen=True)
class Artifact:
  """An exported forward at one budget and its contract; call it on a TokenBatch.

  Attributes:
    exported: the `jax.export.Exported` forward `(patches, coords, grid, valid) -> logits`.
    contract: JSON-friendly description of inputs, output, budget, head, class names.
  """
  exported: jax.export.Exported
  contract: dict[str, Any]

  def __call__(self, tokens: TokenBatch | Mapping[str, Any]) -> jax.Array:
    """float32 logits `[B, num_classes]` of a TokenBatch (or a mapping of its arrays).

    Raises:
      ValueError: an input is missing or has another shape or dtype than the contract.
    """
    arrays = []
    for spec in self.contract['inputs']:
      name = spec['name']
      x = tokens.get(name) if isinstance(tokens, Mapping) else getattr(tokens, name, None)
      if x is None:
        raise ValueError(f"input '{name}' is missing; the artifact takes {INPUTS}")
      if (x.ndim != len(spec['shape']) or list(x.shape[1:]) != spec['shape'][1:]
          or np.dtype(x.dtype) != np.dtype(spec['dtype'])):
        raise ValueError(f"input '{name}': expected {spec['dtype']} "
                         f"{spec['shape']}, got {np.dtype(x.dtype).name} {list(x.shape)}")
      arrays.append(x)
    if len({x.shape[0] for x in arrays}) != 1:
      raise ValueError(f'inputs disagree on the batch size: '
                       f'{[list(x.shape) for x in arrays]}')
    return self.exported.call(*arrays)


def _input_specs(model: FluxViT, n_max: int, batch: Any
                 ) -> tuple[jax.ShapeDtypeStruct, ...]:
  """ShapeDtypeStructs of (patches, coords, grid, valid) for a batch size `batch`."""
  return (jax.ShapeDtypeStruct((batch, n_max, model.patch_dim), jnp.uint8),
          jax.ShapeDtypeStruct((batch, n_max, 3), jnp.int32),
          jax.ShapeDtypeStruct((batch, 3), jnp.int32),
          jax.ShapeDtypeStruct((batch, n_max), jnp.bool_))


def export_budget(model: FluxViT, params, *, budget: int, n_max: int,
                  head: int | None = None, class_names: Sequence[str] | None = None,
                  platforms: Sequence[str] | None = None) -> Artifact:
  """Exports the forward of `model` with `params` baked in, at one budget and head.

  Args:
    model, params: the FluxViT and its float32 params.
    budget: tokens kept (static K, >= 1); a budget >= n_max keeps every valid token.
    n_max: token slots per sample of the input contract.
    head: projector/classifier index; None: the head whose training budget is nearest
      to min(budget, n_max).
    class_names: names of the classes, recorded in the contract (None: indices).
    platforms: e.g. ('cpu', 'cuda'); None exports for the default backend.

  Raises:
    ValueError: budget or n_max below 1, head out of range, or class names that do not
      fit the classifier.
  """
  if budget < 1 or n_max < 1:
    raise ValueError(f'budget={budget} and n_max={n_max} must be at least 1')
  head = model.nearest_head(budget, n_max) if head is None else int(head)
  if not 0 <= head < len(model.head_budgets):
    raise ValueError(f'head={head} out of range for the {len(model.head_budgets)} heads')
  if class_names is not None and len(class_names) != model.num_classes:
    raise ValueError(f'{len(class_names)} class names for {model.num_classes} classes')

  def forward(patches, coords, grid, valid):
    logits, _ = model.apply({'params': params}, TokenBatch(patches, coords, grid, valid),
                            budget=budget, head=head)
    return logits  # [b, num_classes]

  batch, = jax.export.symbolic_shape('b')
  exported = jax.export.export(jax.jit(forward), platforms=platforms)(
      *_input_specs(model, n_max, batch))
  contract = dict(
      format=FORMAT,
      inputs=[dict(_spec(aval), name=name, meaning=_MEANING[name])
              for name, aval in zip(INPUTS, exported.in_avals)],
      output=dict(_spec(exported.out_avals[0]), name='logits'),
      n_max=n_max, patch_size=model.patch_size, tubelet_size=model.tubelet_size,
      budget=budget, tokens_kept=min(budget, n_max), head=head,
      head_budgets=list(model.head_budgets), selector=model.selector,
      num_classes=model.num_classes,
      class_names=None if class_names is None else list(class_names),
      platforms=list(exported.platforms), jax_version=jax.__version__)
  return Artifact(exported, contract)


def _spec(aval) -> dict[str, Any]:
  """dtype and shape of an abstract value; a symbolic dimension as its name."""
  return dict(dtype=np.dtype(aval.dtype).name,
              shape=[d if isinstance(d, int) else str(d) for d in aval.shape])


def save(artifact: Artifact, directory: str | os.PathLike, *,
         overwrite: bool = False) -> None:
  """Writes DIR/model.jaxexport and DIR/contract.json.

  Raises:
    ValueError: the directory already holds an artifact and `overwrite` is False.
  """
  os.makedirs(directory, exist_ok=True)
  target = os.path.join(directory, EXPORTED)
  if os.path.exists(target) and not overwrite:
    raise ValueError(f'{target}: exists; pass overwrite=True (--overwrite) to replace it')
  with open(target, 'wb') as f:
    f.write(artifact.exported.serialize())
  with open(os.path.join(directory, CONTRACT), 'w') as f:
    json.dump(artifact.contract, f, indent=2)


def load(directory: str | os.PathLike) -> Artifact:
  """The artifact saved in `directory`, ready to call on TokenBatches.

  Raises:
    ValueError: a file is missing or is not a flux_jax export.
  """
  try:
    with open(os.path.join(directory, CONTRACT)) as f:
      contract = json.load(f)
    with open(os.path.join(directory, EXPORTED), 'rb') as f:
      data = f.read()
  except (OSError, ValueError) as e:
    raise ValueError(f'{directory}: not a flux_jax export artifact ({e})') from e
  if contract.get('format') != FORMAT:
    raise ValueError(f'{directory}/{CONTRACT}: format {contract.get("format")!r}, '
                     f'expected {FORMAT!r}')
  return Artifact(jax.export.deserialize(bytearray(data)), contract)
