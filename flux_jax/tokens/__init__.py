"""Tokens: the TokenBatch contract, patchify and on-device token selection."""

from flux_jax.tokens.select import SELECTORS, select_tokens
from flux_jax.tokens.token_batch import ClipBatch, TokenBatch, grid_coords, patchify

__all__ = ['SELECTORS', 'ClipBatch', 'TokenBatch', 'grid_coords', 'patchify', 'select_tokens']
