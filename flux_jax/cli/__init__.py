"""Entry points: flags only, each a `python -m flux_jax.cli.<name>` program and a
`flux-<name>` console script; the work is in the library."""
