"""Analytic GFLOPs: SPEC E.1's published numbers, and the matmuls our forward really does."""

import math

import jax
import numpy as np
import pytest

from flux_jax.eval.flops import MATMUL_TERMS, flop_terms, gflops
from flux_jax.model.fluxvit import abstract_params, dummy_tokens, make_model

# SPEC E.1: GFLOPs per view at 512/1024/2048/3072 tokens, K400 head (400 classes).
PUBLISHED = {
    'small': {512: 13.6, 1024: 32.0, 2048: 83.3, 3072: 153.9},
    'base': {512: 49.3, 1024: 108.1, 2048: 254.8, 3072: 440.1},
}
GLPE_TAPS = 2 * 4 * 4  # linear in time x bicubic in space, one einsum per kept token


@pytest.mark.parametrize('variant', sorted(PUBLISHED))
def test_published_gflops(variant):
  model = make_model(dict(variant=variant, num_classes=400))
  for tokens, published in PUBLISHED[variant].items():
    assert round(gflops(model, tokens), 1) == published, (variant, tokens)


def test_gflops_grow_with_kept_and_raw_tokens():
  model = make_model(dict(variant='small', num_classes=400))
  kept = [gflops(model, k) for k in (64, 256, 512, 1024, 2048, 3072, 4096)]
  assert all(a < b for a, b in zip(kept, kept[1:]))
  # Token Optimization: the same budget from more raw tokens costs only the patch embed.
  to = gflops(model, 2048, raw_tokens=4096)
  assert to > kept[4]
  assert to - kept[4] == pytest.approx(2048 * model.patch_dim * model.embed_dim / 1e9)


def test_bad_token_counts_are_refused():
  model = make_model(dict(variant='small', num_classes=400))
  with pytest.raises(ValueError, match='raw_tokens'):
    gflops(model, 2048, raw_tokens=1024)
  with pytest.raises(ValueError, match='tokens=0'):
    gflops(model, 0)


def _dot_macs(jaxpr) -> int:
  """Multiply-adds of every dot_general in a jaxpr, nested jaxprs included."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      (contract, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
    for value in eqn.params.values():
      for sub in value if isinstance(value, (list, tuple)) else (value,):
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          total += _dot_macs(inner)
  return total


@pytest.mark.parametrize('budget', [None, 20])
def test_matmul_terms_match_the_traced_forward(budget):
  """Every dot_general of one forward (batch 2) is an analytic matmul term, except the
  GLPE tap sum (K x 32 x D), which the official code does as an uncounted resize."""
  model = make_model(dict(variant='tiny', num_classes=6, mlp_ratio=3.0))
  batch, grid = 2, (4, 3, 4)
  raw = int(np.prod(grid))
  kept = raw if budget is None else budget
  tokens = dummy_tokens(model, batch_size=batch, grid=grid)
  forward = lambda p, t: model.apply({'params': p}, t, budget=budget, head=1)  # noqa: E731
  traced = _dot_macs(jax.make_jaxpr(forward)(abstract_params(model), tokens).jaxpr)
  terms = flop_terms(model, kept, raw)
  analytic = sum(terms[k] for k in MATMUL_TERMS)
  assert traced == batch * (analytic + kept * GLPE_TAPS * model.embed_dim)


def test_depthwise_convs_count_only_where_the_model_has_them():
  plain = make_model(dict(variant='small', num_classes=400, use_gpe_proj=False,
                          use_lpe=False))
  full = make_model(dict(variant='small', num_classes=400))
  assert flop_terms(plain, 2048)['depthwise'] == 0
  assert flop_terms(full, 2048)['depthwise'] == (24 * 18 * 18 + 12 * 2049) * 384
