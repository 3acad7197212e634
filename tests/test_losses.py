"""Losses against PyTorch (SPEC C.3): soft CE, label smoothing, SmoothL1, Flux-Multi."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flux_jax.train.losses import flux_multi_loss, one_hot_smoothed, smooth_l1, soft_cross_entropy

B, C, D = 6, 11, 16


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  logits = [rng.normal(size=(B, C)).astype(np.float32) * 3 for _ in range(3)]
  targets = rng.dirichlet(np.ones(C), size=B).astype(np.float32)
  projected = [rng.normal(size=(B, D)).astype(np.float32) for _ in range(2)]
  pooled0 = rng.normal(size=(B, D)).astype(np.float32) * 5
  return logits, targets, projected, pooled0


def test_soft_cross_entropy_matches_torch():
  logits, targets, _, _ = _inputs()
  want = F.cross_entropy(torch.from_numpy(logits[0]), torch.from_numpy(targets))
  np.testing.assert_allclose(soft_cross_entropy(logits[0], targets), want.item(), rtol=1e-6)


def test_bfloat16_logits_are_upcast():
  logits, targets, _, _ = _inputs()
  x = jnp.asarray(logits[0], jnp.bfloat16)
  want = soft_cross_entropy(np.asarray(x.astype(jnp.float32)), targets)
  assert soft_cross_entropy(x, targets).dtype == jnp.float32
  np.testing.assert_allclose(soft_cross_entropy(x, targets), want, rtol=1e-6)


@pytest.mark.parametrize('smoothing', [0.0, 0.1])
def test_smoothed_one_hot_matches_torch_label_smoothing(smoothing):
  logits, _, _, _ = _inputs()
  labels = np.arange(B) % C
  targets = one_hot_smoothed(labels, C, smoothing)
  np.testing.assert_allclose(np.sum(targets, axis=1), 1.0, rtol=1e-6)
  want = F.cross_entropy(torch.from_numpy(logits[1]), torch.from_numpy(labels),
                         label_smoothing=smoothing)
  np.testing.assert_allclose(soft_cross_entropy(logits[1], targets), want.item(), rtol=1e-6)


@pytest.mark.parametrize('beta', [1.0, 0.3])
def test_smooth_l1_matches_torch(beta):
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(2, B, D)).astype(np.float32)  # |x - y| on both sides of beta
  want = torch.nn.SmoothL1Loss(beta=beta)(torch.from_numpy(x), torch.from_numpy(y))
  np.testing.assert_allclose(smooth_l1(x, y, beta), want.item(), rtol=1e-6)


def _torch_flux_multi(logits, targets, projected, pooled0):
  """SPEC C.3 in torch: the engine's three CE terms and two SmoothL1 alignments."""
  t = torch.from_numpy
  def align(src, tgt):
    tgt = tgt.detach()
    src = src / src.norm(dim=-1, keepdim=True)
    tgt = tgt / tgt.norm(dim=-1, keepdim=True)
    return torch.nn.SmoothL1Loss()(src, tgt)
  ce = sum(F.cross_entropy(t(x), t(targets)) for x in logits)
  return ce + align(t(projected[0]), t(pooled0)) + align(t(projected[1]), t(pooled0))


def test_flux_multi_loss_matches_torch():
  logits, targets, projected, pooled0 = _inputs()
  loss, metrics = jax.jit(flux_multi_loss)(logits, targets, projected, pooled0)
  np.testing.assert_allclose(loss, _torch_flux_multi(logits, targets, projected, pooled0).item(),
                             rtol=1e-6)
  assert set(metrics) == {'ce_0', 'ce_1', 'ce_2', 'align_1', 'align_2', 'total'}
  np.testing.assert_allclose(metrics['ce_2'], soft_cross_entropy(logits[2], targets), rtol=1e-6)
  assert metrics['total'] == loss and loss.dtype == jnp.float32
  assert 0 < metrics['align_1'] < 1  # unit vectors: |diff| < 1 per element, not vacuous


def test_alignment_target_is_stop_gradient():
  logits, targets, projected, pooled0 = _inputs()
  grads = jax.grad(lambda p, z: flux_multi_loss(logits, targets, p, z)[0], argnums=(0, 1))(
      projected, pooled0)
  assert np.all(np.asarray(grads[1]) == 0)
  assert all(np.abs(np.asarray(g)).max() > 0 for g in grads[0])


def test_single_budget_is_cross_entropy_only():
  logits, targets, _, pooled0 = _inputs()
  loss, metrics = flux_multi_loss(logits[:1], targets, [], pooled0)
  assert set(metrics) == {'ce_0', 'total'}
  np.testing.assert_allclose(loss, soft_cross_entropy(logits[0], targets), rtol=1e-7)
  with pytest.raises(ValueError, match='3 budgets need 2 projected'):
    flux_multi_loss(logits, targets, projected=[pooled0], pooled0=pooled0)
