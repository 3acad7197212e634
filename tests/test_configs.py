"""Every config builds, locks, and makes a model; bad keys fail before compiling."""

import importlib
import pathlib

import pytest

from flux_jax.configs import common
from flux_jax.model import make_model

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / 'configs').glob('*.py')
                 if p.stem not in ('__init__', 'common'))


@pytest.mark.parametrize('name', CONFIGS)
def test_config_builds_a_model(name):
  config = importlib.import_module(f'flux_jax.configs.{name}').get_config()
  model = make_model(config.model)
  assert model.num_classes == config.model.num_classes
  with pytest.raises(AttributeError):
    config.not_a_key = 1  # locked: typos fail


def test_unknown_model_key_is_refused():
  with pytest.raises(ValueError, match='embed_dims'):
    make_model(common.model('tiny', embed_dims=32))
  with pytest.raises(ValueError, match='variant'):
    make_model(common.model('huge'))


def test_config_arg_parsing():
  assert common.parse_arg('budget=1024,flag=true', budget=2048, flag=False) == dict(
      budget=1024, flag=True)
  with pytest.raises(ValueError, match='budgt'):
    common.parse_arg('budgt=3', budget=1)


def test_official_model_names_are_variants():
  for official, ours in (('fluxvit_small_patch14', 'small'), ('fluxvit_base_patch14', 'base')):
    assert make_model(common.model(official)) == make_model(common.model(ours))
