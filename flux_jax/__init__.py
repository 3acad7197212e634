"""flux_jax: FluxViT video transformers in JAX, deployable at any token budget."""

__version__ = '0.1.0'


def __getattr__(name):
  # `flux_jax.predict` on first use: importing the package stays free of jax.
  if name == 'predict':
    from flux_jax.eval.predict import predict  # pylint: disable=g-import-not-at-top
    return predict
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
