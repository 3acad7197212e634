"""Flux plans: the official valid set, uniform draws keyed on (seed, step), clear errors."""

import collections

import pytest

from flux_jax.tokens.plan import FluxPlan, PlanSampler

OFFICIAL = dict(frames=(6, 26, 2), resolutions=(112, 364, 28), min_tokens=2048,
                max_tokens=6144)


def test_official_space_has_41_pairs():
  sampler = PlanSampler.from_config(OFFICIAL)
  plans = sampler.plans
  assert len(plans) == 41  # SPEC C.1
  by_t = collections.defaultdict(list)
  for p in plans:
    by_t[p.frames].append(p.resolution)
  assert by_t[6] == [280, 308, 336]
  assert by_t[12] == list(range(196, 309, 28))
  assert by_t[24] == list(range(140, 225, 28))
  assert sampler.max_plan_tokens == 6144  # 24 x 224^2 = 16 x 16 x 24


def test_draws_are_keyed_on_seed_and_step_and_uniform():
  a = PlanSampler.from_config(OFFICIAL, seed=1)
  b = PlanSampler.from_config(OFFICIAL, seed=1)
  c = PlanSampler.from_config(OFFICIAL, seed=2)
  draws = [a(s) for s in range(4100)]
  assert draws == [b(s) for s in range(4100)]
  assert draws[:50] != [c(s) for s in range(50)]
  counts = collections.Counter(draws)
  assert set(counts) == set(a.plans)
  assert max(counts.values()) < 2 * min(counts.values())  # 100 expected each


def test_bad_configs_fail_with_the_key():
  with pytest.raises(ValueError, match='multiples of the patch'):
    PlanSampler(frames=(8,), resolutions=(100,), min_tokens=1, max_tokens=10**6)
  with pytest.raises(ValueError, match='min_tokens'):
    PlanSampler(frames=(8,), resolutions=(112,), min_tokens=10**6, max_tokens=10**7)
  with pytest.raises(ValueError, match="'max_tokens'"):
    PlanSampler.from_config(dict(frames=(2, 4), resolutions=(28, 56), min_tokens=1))
  assert FluxPlan(8, 224).num_tokens(14) == 2048
