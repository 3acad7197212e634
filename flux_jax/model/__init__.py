"""FluxViT in Flax Linen."""

from flux_jax.model.fluxvit import (VARIANTS, FluxViT, abstract_params, dummy_tokens,
                                    init_params, make_model, model_config, param_specs)

__all__ = ['VARIANTS', 'FluxViT', 'abstract_params', 'dummy_tokens', 'init_params',
           'make_model', 'model_config', 'param_specs']
