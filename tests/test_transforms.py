"""Host video transforms against torch's F.interpolate and the official crop rules."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flux_jax.data import transforms


def _torch_bilinear(frames, out_h, out_w):
  x = torch.from_numpy(np.asarray(frames, np.float32))
  x = x.permute(0, 3, 1, 2)  # [T, C, H, W]
  y = F.interpolate(x, size=(out_h, out_w), mode='bilinear', align_corners=False,
                    antialias=False)
  return y.permute(0, 2, 3, 1).numpy()  # [T, out_h, out_w, C]


def _clip(t, h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


RESIZES = [
    ((2, 16, 16), 40, 40),  # up
    ((2, 40, 40), 16, 16),  # down
    ((3, 25, 34), 22, 22),  # down, non-square in
    ((2, 12, 30), 37, 11),  # up in H, down in W
    ((2, 9, 7), 9, 20),  # H unchanged
    ((1, 1, 5), 4, 1),  # single pixel axes
    ((2, 256, 340), 224, 224),  # the usual clip
]


@pytest.mark.parametrize('shape,out_h,out_w', RESIZES)
def test_resize_float_matches_torch(shape, out_h, out_w):
  frames = np.random.default_rng(1).uniform(0, 255, shape + (3,)).astype(np.float32)
  got = transforms._resize_float(frames, out_h, out_w)
  assert got.dtype == np.float32 and got.shape == (shape[0], out_h, out_w, 3)
  # A wrong tap or weight is off by whole levels; this leaves room for float rounding.
  want = _torch_bilinear(frames, out_h, out_w)
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-2)


@pytest.mark.parametrize('shape,out_h,out_w', RESIZES)
def test_resize_uint8_rounds_torch(shape, out_h, out_w):
  frames = _clip(*shape)
  got = transforms.resize_bilinear(frames, out_h, out_w)
  assert got.dtype == np.uint8 and got.shape == (shape[0], out_h, out_w, 3)
  err = np.abs(got - _torch_bilinear(frames, out_h, out_w))
  assert err.max() <= 0.5 + 1e-2


def test_resize_same_size_is_identity():
  frames = _clip(2, 10, 13)
  np.testing.assert_array_equal(transforms.resize_bilinear(frames, 10, 13), frames)
  floats = frames + np.float32(0.25)
  np.testing.assert_array_equal(transforms.resize_bilinear(floats, 10, 13), frames)
  np.testing.assert_array_equal(floats, frames + np.float32(0.25))  # input untouched


def test_crop_params_inside_frame_and_in_range():
  height, width, scale, ratio = 1000, 1200, (0.08, 1.0), (3 / 4, 4 / 3)
  rng = np.random.default_rng(0)
  for _ in range(2000):
    top, left, h, w = transforms.random_resized_crop_params(
        height, width, rng, scale, ratio)
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    # Rounding w and h to integers moves area and ratio by well under 1% at this size.
    assert scale[0] * 0.99 <= h * w / (height * width) <= scale[1]
    assert ratio[0] * 0.99 <= w / h <= ratio[1] * 1.01


def test_crop_params_spread_over_the_ranges():
  rng = np.random.default_rng(0)
  boxes = np.array(
      [transforms.random_resized_crop_params(400, 400, rng) for _ in range(3000)])
  area = boxes[:, 2] * boxes[:, 3] / 400**2
  log_ratio = np.log(boxes[:, 3] / boxes[:, 2])
  assert area.min() < 0.1 and area.max() > 0.95
  assert log_ratio.min() < math.log(0.77) and log_ratio.max() > math.log(1.3)
  # Log-uniform ratio: symmetric about 0 in log space.
  assert abs(np.median(log_ratio)) < 0.03


def test_crop_params_deterministic_for_a_seed():
  draw = lambda seed: [transforms.random_resized_crop_params(
      240, 320, np.random.default_rng(seed)) for _ in range(5)]
  assert draw(3) == draw(3)
  rng = np.random.default_rng(3)
  boxes = {transforms.random_resized_crop_params(240, 320, rng) for _ in range(20)}
  assert len(boxes) > 1


@pytest.mark.parametrize('height,width,want', [
    (100, 300, (0, 83, 100, 133)),  # too wide: h kept, w = round(100 * 4/3)
    (300, 100, (83, 0, 133, 100)),  # too tall: w kept, h = round(100 / (3/4))
    (100, 120, (0, 0, 100, 120)),  # ratio inside the range: the whole frame
])
def test_crop_params_fallback_is_central(height, width, want):
  rng = np.random.default_rng(0)
  got = transforms.random_resized_crop_params(height, width, rng, scale=(2.0, 3.0))
  assert got == want


def test_random_resized_crop_one_box_for_the_clip():
  frames = np.repeat(_clip(1, 60, 80), 4, axis=0)  # four equal frames
  out = transforms.random_resized_crop(frames, 32, np.random.default_rng(5))
  assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8
  for t in range(1, 4):
    np.testing.assert_array_equal(out[t], out[0])
  top, left, h, w = transforms.random_resized_crop_params(
      60, 80, np.random.default_rng(5))
  np.testing.assert_array_equal(
      out, transforms.resize_bilinear(frames[:, top:top + h, left:left + w], 32, 32))


def test_flip_twice_is_identity():
  frames = _clip(3, 8, 11)
  flipped = transforms.horizontal_flip(frames)
  np.testing.assert_array_equal(flipped[:, :, 0], frames[:, :, -1])
  np.testing.assert_array_equal(transforms.horizontal_flip(flipped), frames)


def test_resize_short_side_truncates_long_side():
  # 32 * 110 / 60 = 58.67: the official Resize truncates to 58.
  assert transforms.resize_short_side(_clip(1, 60, 110), 32).shape == (1, 32, 58, 3)
  assert transforms.resize_short_side(_clip(1, 110, 60), 32).shape == (1, 58, 32, 3)
  assert transforms.resize_short_side(_clip(1, 50, 50), 32).shape == (1, 32, 32, 3)


@pytest.mark.parametrize('shape,num_crops,starts', [
    ((2, 60, 110), 3, [0, 13, 26]),  # landscape, resized to 32 x 58: left, center, right
    ((2, 110, 60), 3, [0, 13, 26]),  # portrait: top, center, bottom
    ((2, 60, 110), 1, [13]),
    ((2, 90, 300), 3, [0, 37, 74]),  # resized to 32 x 106
    ((2, 40, 40), 3, [0, 0, 0]),
])
def test_spatial_crops_offsets(shape, num_crops, starts):
  frames = _clip(*shape)
  resized = transforms.resize_short_side(frames, 32)
  crops = transforms.spatial_crops(frames, 32, num_crops)
  assert len(crops) == num_crops
  for view, s in zip(crops, starts):
    assert view.shape == (2, 32, 32, 3)
    want = resized[:, s:s + 32] if shape[1] > shape[2] else resized[:, :, s:s + 32]
    np.testing.assert_array_equal(view, want)


def test_center_crop_rounds_half_to_even():
  # Slack 23: the official CenterCrop starts at round(11.5) = 12, the test crop at 11.
  frames = _clip(2, 32, 55)
  np.testing.assert_array_equal(transforms.center_crop(frames, 32),
                                frames[:, :, 12:44])
  np.testing.assert_array_equal(transforms.spatial_crops(frames, 32, 1)[0],
                                frames[:, :, 11:43])
  portrait = _clip(2, 53, 32)  # slack 21: round(10.5) = 10
  np.testing.assert_array_equal(transforms.center_crop(portrait, 32),
                                portrait[:, 10:42])


@pytest.mark.parametrize('call', [
    lambda: transforms.resize_bilinear(_clip(1, 8, 8), 0, 4),
    lambda: transforms.resize_bilinear(np.zeros((8, 8, 3), np.uint8), 4, 4),
    lambda: transforms.resize_short_side(_clip(1, 8, 8), -1),
    lambda: transforms.crop(_clip(1, 8, 8), 2, 0, 7, 8),
    lambda: transforms.crop(_clip(1, 8, 8), 0, -1, 4, 4),
    lambda: transforms.spatial_crops(_clip(1, 8, 8), 4, 0),
    lambda: transforms.random_resized_crop_params(0, 8, np.random.default_rng(0)),
    lambda: transforms.random_resized_crop_params(
        8, 8, np.random.default_rng(0), scale=(1.0, 0.5)),
    lambda: transforms.random_resized_crop_params(
        8, 8, np.random.default_rng(0), ratio=(0.0, 1.0)),
])
def test_errors_on_bad_sizes(call):
  with pytest.raises(ValueError):
    call()


def test_crop_error_names_the_shapes():
  with pytest.raises(ValueError, match=r'h=9.*\(1, 8, 8, 3\)'):
    transforms.crop(_clip(1, 8, 8), 0, 0, 9, 8)
