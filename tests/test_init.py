"""Initialization from scratch follows SPEC B.7."""

import jax
import numpy as np
import pytest

from flux_jax.model import init_params, make_model
from flux_jax.model import posemb
from flux_jax.model.fluxvit import unstack_blocks


@pytest.mark.parametrize('scan_layers', [False, True])
def test_init_matches_spec(scan_layers):
  """Scanned blocks too: fix_init_weight's per-block scale is a scanned input there."""
  model = make_model(dict(variant='tiny', num_classes=5, depth=4, embed_dim=128,
                          scan_layers=scan_layers))
  p = jax.tree.map(np.asarray, init_params(model, jax.random.key(0)))
  if scan_layers:
    assert p['blocks']['attn']['qkv']['kernel'].shape[0] == 4
    p = unstack_blocks(p)
  assert not np.array_equal(p['blocks_0']['attn']['qkv']['kernel'],
                            p['blocks_1']['attn']['qkv']['kernel'])  # an rng per block
  np.testing.assert_allclose(p['pos_embed'], posemb.sincos_3d(4, 4, 4, 128), atol=1e-6)
  np.testing.assert_array_equal(p['cls_pos'], 0)
  np.testing.assert_array_equal(p['gpe_proj']['scale'], 1)
  np.testing.assert_array_equal(p['gpe_proj']['bias'], 0)
  for i in range(4):
    b = p[f'blocks_{i}']
    np.testing.assert_allclose(b['ls1']['gamma'], 1e-5)
    np.testing.assert_array_equal(b['attn']['lpe']['scale'], 1)
    np.testing.assert_array_equal(b['mlp']['fc1']['bias'], 0)
    assert abs(b['attn']['qkv']['kernel'].std() - 0.02) < 0.002
    # fix_init_weight: attn.proj and mlp.fc2 scaled by 1/sqrt(2 (i + 1)).
    want = 0.02 / np.sqrt(2 * (i + 1))
    assert abs(b['mlp']['fc2']['kernel'].std() - want) < 0.1 * want
    assert abs(b['attn']['proj']['kernel'].std() - want) < 0.1 * want
  # Conv3d default: U(+-1/sqrt(588)).
  k = p['patch_embed']['proj']['kernel']
  assert np.abs(k).max() <= 1 / np.sqrt(588) and np.abs(k).max() > 0.9 / np.sqrt(588)
  np.testing.assert_array_equal(p['patch_embed']['norm_before']['scale'], 1)
  np.testing.assert_array_equal(p['clip_projector_0']['cross_attn']['q_bias'], 0)
  np.testing.assert_array_equal(p['fc_norm']['scale'], 1)
