"""GLPE interpolation against torch.nn.functional.interpolate, and the sin-cos table."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flux_jax.model import posemb
from flux_jax.tokens import grid_coords


def _at_grid(table, t, hp, wp):
  """Our per-token evaluation at every token of a (t, hp, wp) grid: [t, hp, wp, D]."""
  coords = grid_coords(t, hp, wp)[None]
  grid = np.array([[t, hp, wp]], np.int32)
  out = jax.jit(posemb.interpolate_at)(jnp.asarray(table), coords, grid)
  return np.asarray(out).reshape(t, hp, wp, -1)


def _torch_resize(table, t, hp, wp, mode):
  x = torch.from_numpy(table).permute(3, 0, 1, 2)[None]  # [1, D, T0, H0, W0]
  d, t0, h0, w0 = x.shape[1:]
  if mode in ('both', 'linear'):  # time: linear, one series per (h, w, d)
    s = x.permute(0, 3, 4, 1, 2).reshape(1, h0 * w0 * d, t0)
    s = F.interpolate(s, size=t, mode='linear', align_corners=False)
    x = s.reshape(1, h0, w0, d, t).permute(0, 3, 4, 1, 2)
  if mode in ('both', 'bicubic'):  # space: bicubic, one image per frame
    tt = x.shape[2]
    f = x.permute(0, 2, 1, 3, 4).reshape(tt, d, h0, w0)
    f = F.interpolate(f, size=(hp, wp), mode='bicubic', align_corners=False)
    x = f.reshape(1, tt, d, hp, wp).permute(0, 2, 1, 3, 4)
  return x[0].permute(1, 2, 3, 0).numpy()


TABLE_SHAPE = (6, 5, 7, 8)  # T0, H0, W0, D: unequal so axes cannot be confused


@pytest.mark.parametrize('t,hp,wp,mode', [
    (3, 5, 7, 'linear'), (11, 5, 7, 'linear'), (1, 5, 7, 'linear'),
    (6, 9, 4, 'bicubic'), (6, 2, 16, 'bicubic'), (6, 1, 1, 'bicubic'),
    (4, 8, 8, 'both'), (16, 3, 12, 'both'), (24, 18, 18, 'both')])
def test_matches_torch_interpolate(t, hp, wp, mode):
  table = np.random.default_rng(t * hp + wp).normal(size=TABLE_SHAPE).astype(np.float32)
  want = _torch_resize(table, t, hp, wp, mode)
  got = _at_grid(table, t, hp, wp)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_same_size_is_identity():
  table = np.random.default_rng(0).normal(size=TABLE_SHAPE).astype(np.float32)
  np.testing.assert_array_equal(_at_grid(table, *TABLE_SHAPE[:3]), table)


def test_gradient_reaches_every_tap():
  table = jnp.ones((4, 4, 4, 2))
  coords = grid_coords(8, 7, 7)[None]
  grid = np.array([[8, 7, 7]], np.int32)
  g = jax.grad(lambda tb: posemb.interpolate_at(tb, coords, grid).sum())(table)
  assert np.all(np.asarray(g) != 0)
  # Weights sum to one per output token, so the total gradient is the token count x D.
  np.testing.assert_allclose(float(g.sum()), 8 * 7 * 7 * 2, rtol=1e-5)


def test_sincos_layout():
  """[time D/4 | w 3D/8 | h 3D/8], each [sin | cos] (SPEC B.3 item 5)."""
  d = 32
  table = posemb.sincos_3d(3, 4, 5, d)
  t, h, w = 2, 1, 3
  v = table[t, h, w]
  np.testing.assert_allclose(v[:d // 4], posemb.sincos_1d(d // 4, np.array([t]))[0], atol=1e-6)
  np.testing.assert_allclose(v[d // 4:d // 4 + 12], posemb.sincos_1d(12, np.array([w]))[0],
                             atol=1e-6)
  np.testing.assert_allclose(v[-12:], posemb.sincos_1d(12, np.array([h]))[0], atol=1e-6)
  # position 0 encodes to [0..0 | 1..1]
  np.testing.assert_array_equal(posemb.sincos_1d(8, np.array([0]))[0], [0] * 4 + [1] * 4)
  assert np.isclose(posemb.sincos_1d(8, np.array([1]))[0, 1], np.sin(1 / 10000 ** 0.25))


def test_temporal_scale_multiplies_the_time_channels_only():
  d = 32
  base, scaled = posemb.sincos_3d(3, 4, 5, d), posemb.sincos_3d(3, 4, 5, d, temporal_scale=5.0)
  np.testing.assert_allclose(scaled[..., :d // 4], 5.0 * base[..., :d // 4], rtol=1e-6)
  np.testing.assert_array_equal(scaled[..., d // 4:], base[..., d // 4:])
