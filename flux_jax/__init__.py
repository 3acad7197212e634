"""flux_jax: FluxViT video transformers in JAX, deployable at any token budget."""

__version__ = '0.1.0'
