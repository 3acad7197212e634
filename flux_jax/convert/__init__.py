"""PyTorch FluxViT checkpoints <-> flux_jax params; `python -m flux_jax.cli.convert` is the CLI."""

from flux_jax.convert.official import (CheckpointError, load_official_checkpoint,
                                       save_official_checkpoint, to_official_state_dict)

__all__ = ['CheckpointError', 'load_official_checkpoint', 'save_official_checkpoint',
           'to_official_state_dict']
