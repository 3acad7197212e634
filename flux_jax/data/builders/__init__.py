"""TFDS builders; importing this package registers `synthetic_motion` and `video_csv`."""

from flux_jax.data.builders import synthetic_motion
from flux_jax.data.builders import video_csv
