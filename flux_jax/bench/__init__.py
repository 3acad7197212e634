"""Benchmarks: `python -m flux_jax.bench <name>` prints a table. Tests never time things."""
