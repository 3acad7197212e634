"""TFDS builders; importing this package registers `synthetic_motion`, `video_csv` and
`captioned_video` (which `synthetic_captions` builds through)."""

from flux_jax.data.builders import captioned_video
from flux_jax.data.builders import synthetic_captions
from flux_jax.data.builders import synthetic_motion
from flux_jax.data.builders import video_csv
