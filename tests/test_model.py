"""FluxViT against an independent PyTorch re-implementation of SPEC (tests/reference_torch.py)."""

import functools

import jax
import numpy as np
import pytest
import torch

from flux_jax.convert.official import load_official_checkpoint
from flux_jax.eval.predict import classify
from flux_jax.model.fluxvit import stack_blocks
from flux_jax.tokens import patchify
import reference_torch

TINY = dict(embed_dim=64, depth=2, num_heads=2, attn_pool_num_heads=4, clip_embed_dim=64,
            num_classes=5, num_frames=4, img_size=56)


def _torch_model(activation, seed=0):
  model = reference_torch.TorchFluxViT(mlp_activation=activation, **TINY).eval()
  return reference_torch.init_perturbed_(model, seed)


def _load(torch_model, activation):
  sd = {k: v.numpy() for k, v in torch_model.state_dict().items()}
  return load_official_checkpoint(sd, variant='tiny', num_classes=5, num_frames=4,
                                  mlp_activation=activation)


def _video(b, t, h, w, seed):
  return np.random.default_rng(seed).normal(size=(b, t, h, w, 3)).astype(np.float32)


def _assert_close(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  scale = np.abs(want).max()
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * scale)


@pytest.fixture(scope='module', params=['gelu_tanh', 'gelu'])
def pair(request):
  tm = _torch_model(request.param)
  model, params = _load(tm, request.param)
  return tm, model, params


# (T, H, W, budget): no selection at several grids (pos table 4x4x4 up- and downsized),
# then selection on grids whose groups hold >= 3 frames (no ties at the group boundary).
# All are padded to N_MAX tokens, so one compiled forward per (budget, head) serves them.
GRIDS = [(4, 56, 56, None), (8, 70, 70, None), (2, 28, 42, None), (5, 42, 42, None),
         (6, 56, 56, 60), (12, 42, 42, 60), (10, 56, 70, 60)]
N_MAX = 200


@functools.partial(jax.jit, static_argnames=('model', 'budget', 'head', 'align_proj',
                                             'return_layers'))
def _apply(model, params, tokens, budget=None, head=0, align_proj=None, return_layers=()):
  return model.apply({"params": params}, tokens, budget=budget, head=head,
                     align_proj=align_proj, return_layers=return_layers)


@pytest.mark.parametrize('t,h,w,budget', GRIDS)
def test_matches_torch_reference(pair, t, h, w, budget):
  tm, model, params = pair
  video = _video(2, t, h, w, seed=t * h)
  x = torch.from_numpy(video).permute(0, 4, 1, 2, 3)  # [B, 3, T, H, W]
  n = t * (h // 14) * (w // 14)
  groups = reference_torch.num_groups(t)
  keep = None if budget is None else budget // groups
  ratio = None if budget is None else 1 - budget / n
  tokens = patchify(video, n_max=N_MAX)
  for head in range(3):
    align = None if head == 0 else head - 1
    with torch.no_grad():
      want_logits, want_z = tm(x, masking_ratio=ratio, keep_per_group=keep,
                               output_head=head, return_cls=True)
      want_proj = None
      if align is not None:
        _, want_proj = tm(x, masking_ratio=ratio, keep_per_group=keep, output_head=head,
                          return_cls=True, return_projected=True, align_proj=align)
    logits, aux = _apply(model, params, tokens, budget=budget, head=head, align_proj=align)
    _assert_close(logits, want_logits.numpy())
    _assert_close(aux['pooled'], want_z.numpy())
    if align is not None:
      _assert_close(aux['projected'], want_proj.numpy())
    if budget is not None:
      np.testing.assert_array_equal(aux['kept_index'], tm.last_kept_index.numpy())
  if (t, budget) == (6, 60):  # the public one-call API, once
    _assert_close(classify(model, params, video, budget=budget, head=2), want_logits.numpy())


def test_padding_does_not_change_outputs(pair):
  _, model, params = pair
  video = _video(2, 6, 42, 42, seed=3)
  for budget in (None, 30):
    a, _ = _apply(model, params, patchify(video), budget=budget)
    b, _ = _apply(model, params, patchify(video, n_max=90), budget=budget)
    _assert_close(b, a)


def test_batch_of_one_equals_row_of_batch(pair):
  _, model, params = pair
  video = _video(2, 6, 42, 42, seed=4)
  both = classify(model, params, video, budget=30)
  one = classify(model, params, video[1:], budget=30)
  _assert_close(one[0], both[1])


def test_mixed_grids_in_one_batch(pair):
  """Each sample carries its own grid: a batch may mix grids."""
  _, model, params = pair
  a, b = _video(1, 6, 42, 42, seed=5), _video(1, 4, 56, 28, seed=6)
  ta, tb = patchify(a, n_max=64), patchify(b, n_max=64)
  mixed = jax.tree.map(lambda u, v: np.concatenate([u, v]), ta, tb)
  got, _ = _apply(model, params, mixed, budget=24, head=1)
  want_a = classify(model, params, a, budget=24, head=1)
  want_b = classify(model, params, b, budget=24, head=1)
  _assert_close(got, np.concatenate([want_a, want_b]))


@pytest.mark.parametrize('t,h,budget', [(3, 42, 10), (2, 42, 9), (4, 28, 6), (1, 56, 7),
                                        (8, 28, 200)])
def test_edge_grids_run(pair, t, h, budget):
  """Odd T, T = 2, T = 4 (one frame per group) with selection, N_valid < K."""
  _, model, params = pair
  video = _video(1, t, h, h, seed=t)
  n = t * (h // 14) ** 2
  logits, aux = _apply(model, params, patchify(video, n_max=max(n, budget)),
                            budget=budget, head=2)
  assert np.isfinite(np.asarray(logits)).all()
  assert int(aux['kept_valid'].sum()) == min(budget, n)


def test_uint8_patches_are_normalized_on_device(pair):
  _, model, params = pair
  pixels = np.random.default_rng(7).integers(0, 256, (1, 4, 28, 28, 3), dtype=np.uint8)
  mean = np.array([0.485, 0.456, 0.406], np.float32)
  std = np.array([0.229, 0.224, 0.225], np.float32)
  normalized = (pixels / 255.0 - mean) / std
  a, _ = _apply(model, params, patchify(pixels))
  b, _ = _apply(model, params, patchify(normalized.astype(np.float32)))
  _assert_close(a, b)


@pytest.mark.parametrize('budget', [None, 60])
def test_scanned_blocks_compute_the_unrolled_numbers(pair, budget):
  """model.scan_layers: one nn.scan over the stacked block params gives the unrolled
  loop's logits, features and block outputs (return_layers in any order, repeated)."""
  _, model, params = pair
  scanned, stacked = model.clone(scan_layers=True), stack_blocks(params, model.depth)
  tokens = patchify(_video(2, 6, 56, 56, seed=8), n_max=N_MAX)
  for head, layers in ((0, (1, 0, 1)), (1, (0,)), (2, ())):
    align = None if head == 0 else head - 1
    want = _apply(model, params, tokens, budget, head, align, layers)
    got = _apply(scanned, stacked, tokens, budget, head, align, layers)
    assert set(got[1]) == set(want[1])
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6, atol=1e-6)
    if layers:
      assert got[1]['layers'].shape == (len(layers), 2, 1 + (budget or N_MAX), 64)
