"""The frozen teacher of Flux-UMT distillation (SPEC D.2, D.5; DESIGN.md 4).

Any FluxViT serves: a converted FluxViT-B, a model trained by this library (its
WORKDIR/params), or the InternVideo2-1B ViT (`variant='iv2_1b'`: no DPN, GPE proj or
LPE). `Teacher` shares its scope with the FluxViT, so its params are exactly the
FluxViT's params and `checkpoint.load_params` output applies unchanged.

What it returns follows the InternVideo2 teacher (`internvideo2_teacher.py` forward):
the L2-normalised outputs of chosen blocks at every token it keeps, cls included; its
own pooling projector's output, L2-normalised; and that projector's attention over the
kept tokens (head mean, cls key dropped), which drives attention masking.
Every output is behind `jax.lax.stop_gradient`: the teacher is never differentiated.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax

from flux_jax.model.fluxvit import FluxViT
from flux_jax.model.layers import l2_normalize
from flux_jax.tokens.token_batch import TokenBatch


@flax.struct.dataclass
class TeacherOutput:
  """Targets of one teacher pass over K kept tokens.

  Attributes:
    layers: `[L, B, 1 + K, D]`, L2-normalised block outputs, cls first, in the teacher's
      compute dtype (bf16 halves the largest array of a step; IV2 ran bf16 too).
    pooled: float32 `[B, clip]`, the L2-normalised projector output.
    attention: float32 `[B, K]`, the projector's attention on the kept tokens (cls key
      dropped, not renormalised; 0 on empty slots).
    index: int32 `[B, K]`, positions of the kept tokens in the input TokenBatch.
    valid: bool `[B, K]`, False on empty slots.
  """
  layers: jax.Array
  pooled: jax.Array
  attention: jax.Array
  index: jax.Array
  valid: jax.Array


class Teacher(nn.Module):
  """A FluxViT read out for distillation targets.

  Attributes:
    model: the teacher FluxViT.
    layers: block indices returned, in this order, e.g. IV2-1B's (23, 26, 29, 33, 36, 39)
      (SPEC D.2).
    head: the projector whose output and attention are the final target.
  """
  model: FluxViT
  layers: tuple[int, ...]
  head: int = 0

  def setup(self):
    nn.share_scope(self, self.model)

  def __call__(self, tokens: TokenBatch, *, budget: int | None = None) -> TeacherOutput:
    """Targets for `tokens`; `budget` selects with the teacher's own selector."""
    _, aux = self.model(tokens, budget=budget, head=self.head, return_layers=self.layers,
                        return_attention=True)
    layers = l2_normalize(aux['layers']).astype(self.model.dtype)  # [L, B, 1 + K, D]
    out = TeacherOutput(layers=layers,
                        pooled=l2_normalize(aux['pooled']),  # [B, clip]
                        attention=aux['attention'][:, 1:],  # [B, K]
                        index=aux['kept_index'], valid=aux['kept_valid'])
    return jax.tree.map(jax.lax.stop_gradient, out)
