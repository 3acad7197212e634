"""Pieces shared by the experiment configs: each returns one ConfigDict block."""

from __future__ import annotations

import ml_collections

from flux_jax import sharding as sharding_lib

ConfigDict = ml_collections.ConfigDict


def optional(kind: type):
  """A field that is None until set, typed `kind` so that the command line and sweeps can
  set it (`--config.optim.clip_grad=1.0`); a plain None field cannot be overridden."""
  return ml_collections.config_dict.placeholder(kind)


def model(variant: str = 'small', num_classes: int = 400, **overrides) -> ConfigDict:
  """The `config.model` block: a FluxViT variant plus field overrides (see make_model).

  `attention` ('auto', 'xla', 'chunked', 'splash', 'cudnn'), `remat` ('none', 'full',
  'dots_saveable', 'dots_with_no_batch_dims_saveable') and `scan_layers` are always
  present, so the command line can set them (`--config.model.attention=chunked`).
  `scan_layers` is on: the blocks compile once as an nn.scan instead of depth times, with
  the same numbers (`--config.model.scan_layers=False` for the unrolled layout); an
  `init` checkpoint of either layout is converted.
  """
  return ConfigDict(dict(variant=variant, num_classes=num_classes,
                         **{'attention': 'auto', 'remat': 'none', 'scan_layers': True,
                            **overrides}))


def data(name: str, config: str, data_dir: str = '~/tensorflow_datasets', **kw) -> ConfigDict:
  """The `config.data` block (flux_jax.data.sources.open_dataset, train_dataset; workers,
  threads and prefetch: flux_jax.data.pipeline.host_batches)."""
  block = dict(name=name, config=config, data_dir=data_dir, train_split='train',
               eval_split='validation', workers=0, threads=0, prefetch=2, num_sample=1,
               flip=True, scale=(0.08, 1.0), ratio=(0.75, 1.3333))
  block.update(kw)
  return ConfigDict(block)


def flux(frames=(6, 26, 2), resolutions=(112, 364, 28), min_tokens=2048,
         max_tokens=6144) -> ConfigDict:
  """Flux sampling space as Python range arguments (SPEC C.1 defaults)."""
  return ConfigDict(dict(frames=tuple(frames), resolutions=tuple(resolutions),
                         min_tokens=min_tokens, max_tokens=max_tokens))


def optim(**kw) -> ConfigDict:
  """AdamW + layer decay + warmup/cosine (SPEC C.5). `lr` is the base rate before the
  scaling rule lr * batch * num_sample / 256 (set scale_lr=False to give it as is)."""
  block = dict(lr=2e-4, scale_lr=True, min_lr=1e-6, warmup_lr=1e-6, warmup_epochs=1.0,
               weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8, layer_decay=0.75,
               clip_grad=None)
  block.update(kw)
  for key in ('layer_decay', 'clip_grad'):  # None: no layer decay, no clipping
    if block[key] is None:
      block[key] = optional(float)
  return ConfigDict(block)


def mixup(enabled: bool = True) -> ConfigDict:
  """timm batch-mode Mixup/CutMix (SPEC C.2); CutMix works on whole tokens."""
  return ConfigDict(dict(enabled=enabled, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0,
                         switch_prob=0.5))


def mesh(data: int = -1, fsdp: int = 1, tensor: int = 1) -> ConfigDict:
  return ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


def sharding(rules=None) -> ConfigDict:
  """The `config.sharding` block: logical axis name -> mesh axes, as (name, axes) pairs
  (flux_jax.sharding.DEFAULT_RULES unless given; the model's names are in
  flux_jax/model/layers.py)."""
  return ConfigDict(dict(rules=tuple(sharding_lib.DEFAULT_RULES if rules is None else rules)))


def parse_arg(arg: str | None, **defaults):
  """`--config configs/x.py:key=value,key2=value2` -> dict with typed defaults."""
  out = dict(defaults)
  for item in (arg or '').split(','):
    if not item:
      continue
    key, _, value = item.partition('=')
    if key not in defaults:
      raise ValueError(f'unknown config arg {key!r}; known: {sorted(defaults)}')
    kind = type(defaults[key])
    out[key] = (value.lower() in ('1', 'true', 'yes')) if kind is bool else kind(value)
  return out
