"""experiments.selector_recall: how much of the disc the selector keeps, before training."""

import dataclasses

import numpy as np

from flux_jax.data import synthetic
from flux_jax.experiments import selector_recall as sr


def test_disc_tokens_are_the_patches_the_disc_covers():
  scene = synthetic.make_scene(7, 0, 'easy')
  index = np.linspace(0, scene.num_frames - 1, sr.FRAMES).round().astype(int)
  got = sr.disc_tokens(scene, index).reshape(sr.FRAMES, 8, 8)
  h, w = scene.size
  inside = 0
  for j, i in enumerate(index):  # patch centres well inside the disc are disc tokens,
    cy, cx = scene.disc_center[i] * [sr.RESOLUTION / h, sr.RESOLUTION / w]
    ry, rx = scene.disc_radius[i] * sr.RESOLUTION / h, scene.disc_radius[i] * sr.RESOLUTION / w
    centre = (np.arange(8) + 0.5) * sr.PATCH
    # an ellipse after the resize, in units of its radii
    d = np.hypot((centre[:, None] - cy) / ry, (centre[None, :] - cx) / rx)
    assert got[j][d < 0.9].all()
    inside += (d < 0.9).sum()
    # patches whose nearest point is beyond the radius are not
    near_y = np.clip(cy, centre - sr.PATCH / 2, centre + sr.PATCH / 2)
    near_x = np.clip(cx, centre - sr.PATCH / 2, centre + sr.PATCH / 2)
    gap = np.hypot((near_y[:, None] - cy) / ry, (near_x[None, :] - cx) / rx)
    assert not got[j][gap > 1.1].any()
  assert inside >= sr.FRAMES  # the check above saw patches inside the disc


def test_recall_falls_with_the_budget_and_with_a_panning_texture():
  budgets = (512, 128, 32)
  easy = sr.recall(synthetic.DIFFICULTIES['easy'], budgets, clips=6)
  assert easy[512] == (1.0, 1.0)  # every token kept
  assert easy[512][0] >= easy[128][0] >= easy[32][0]
  # Still background: the selector finds the disc far above chance (32 / 512).
  assert easy[32][0] > 4 * 32 / 512
  panning = dataclasses.replace(synthetic.DIFFICULTIES['easy'], texture=3.0, max_pan=4.0,
                                squares_move=True)
  moving = sr.recall(panning, budgets, clips=6)
  assert moving[32][0] < easy[32][0] and moving[128][0] < easy[128][0]
  assert 0 < easy['disc_share'] < 0.25
  # Another grid: 4 x 56^2 has 64 tokens, all kept at K = 64, part of the disc at 16.
  small = sr.recall(synthetic.DIFFICULTIES['panning'], (64, 16), clips=6, grid=(4, 56))
  assert small[64] == (1.0, 1.0) and small[16][0] < 1.0


def test_a_difficulty_object_draws_what_its_name_draws():
  for name, level in synthetic.DIFFICULTIES.items():
    a, la = synthetic.make_clip(11, None, name)
    b, lb = synthetic.make_clip(11, None, level)
    assert la == lb and np.array_equal(a, b)
