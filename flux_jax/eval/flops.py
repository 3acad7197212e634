"""Analytic GFLOPs per view of a FluxViT, in the convention of the published table (SPEC E.1).

The convention is fvcore's `FlopCountAnalysis` with its default op handles, run on the
official PyTorch model (plain attention path) for one view:

- one multiply-add is one FLOP; biases are free;
- counted: every Linear, matmul and conv (`aten::linear/matmul/bmm/_convolution`), and
  every LayerNorm at 5 FLOPs per element (`aten::layer_norm`, affine);
- not counted (fvcore has no handle for them): elementwise ops, softmax, GELU, RMSNorm
  (elementwise ops in the plain path, a fused kernel in the flash path), means, the
  positional-embedding resize (linear/bicubic interpolation) and the token selector's
  frame distances.

Terms of one view with N raw tokens, K kept (n = K + 1 with cls), width D, MLP hidden
F, depth L, projector width C', classes C, patch vector P and stored table T0*H0*W0:

  patch_embed   N*P*D              Conv3d over every raw token (selection runs after it)
  blocks_linear L*n*(4*D*D + 2*D*F)  qkv, proj, fc1, fc2 per kept token
  attention     L*2*n*n*D          q @ k^T and attn @ v, quadratic in K + 1
  pooling       (2n + 1)*D*D + 2*n*D + D*C'   the chosen head's projector: q (one query),
                                   k, v projections, single-query attention, output proj
  classifier    C'*C
  depthwise     T0*H0*W0*D + L*n*D   GPE conv on the stored table, LPE conv per block
                                   (each only where the model has it: use_gpe_proj, use_lpe)
  layer_norms   5*(2*n*D + D + C')   projector norm1_k/v over n, norm1_q, fc_norm

This reproduces every GFLOPs entry of SPEC E.1 to 0.1 (FluxViT-S 13.6 / 32.0 / 83.3 /
153.9 and FluxViT-B 49.3 / 108.1 / 254.8 / 440.1 at 512 / 1024 / 2048 / 3072 tokens,
400 classes, N = K). The matmul terms alone already round to the same numbers; the
rest adds under 0.07 GFLOPs, so the published table cannot tell them apart.
"""

from __future__ import annotations

from flux_jax.model.fluxvit import FluxViT

# The terms that are matrix products in any implementation (and dot_generals in ours).
MATMUL_TERMS = ('patch_embed', 'blocks_linear', 'attention', 'pooling', 'classifier')


def flop_terms(model: FluxViT, tokens: int, raw_tokens: int | None = None) -> dict[str, int]:
  """FLOPs of one view by term (module docstring): `tokens` kept of `raw_tokens` (default:
  all kept)."""
  raw = tokens if raw_tokens is None else raw_tokens
  if not 1 <= tokens <= raw:
    raise ValueError(f'need 1 <= tokens <= raw_tokens, got tokens={tokens}, '
                     f'raw_tokens={raw}')
  d, depth, clip = model.embed_dim, model.depth, model.clip_embed_dim
  hidden = int(d * model.mlp_ratio)
  n = tokens + 1  # cls joins the kept tokens
  t0, h0, w0 = model.pos_grid
  return {
      'patch_embed': raw * model.patch_dim * d,
      'blocks_linear': depth * n * (4 * d * d + 2 * d * hidden),
      'attention': depth * 2 * n * n * d,
      'pooling': (2 * n + 1) * d * d + 2 * n * d + d * clip,
      'classifier': clip * model.num_classes,
      'depthwise': model.use_gpe_proj * t0 * h0 * w0 * d + model.use_lpe * depth * n * d,
      'layer_norms': 5 * (2 * n * d + d + clip),
  }


def gflops(model: FluxViT, tokens: int, raw_tokens: int | None = None) -> float:
  """GFLOPs of one view (fvcore convention, module docstring): `tokens` kept of
  `raw_tokens` raw tokens (default: all kept)."""
  return sum(flop_terms(model, tokens, raw_tokens).values()) / 1e9
