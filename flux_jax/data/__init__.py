"""Data: TFDS builders, decoding, transforms and the grain pipeline (DESIGN.md 1)."""
