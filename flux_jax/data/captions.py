"""Templated captions of synthetic_motion scenes, for the synthetic video-text task.

A caption names the disc's colour, calls it a disc, circle or ball, and says how it moves
(e.g. 'a red disc moves to the left', 'video of a blue ball growing larger'). It is
built from a sentence template (`TEMPLATES`) filled with

  {c} the colour name of the disc (`color_name`, from its RGB),
  {s} a shape word (`SHAPES`),
  {v} a verb phrase of the class ('moves to the left'), {g} its -ing form
      ('moving to the left') (`VERBS`, `GERUNDS`: several wordings per class),

drawn per caption. The last `NUM_HELD_OUT` templates are held out of training:
`draw_captions(..., held_out=False)` (train) uses only `TRAIN_TEMPLATES`;
`held_out=True` (validation) draws from every template and always includes one held-out
sentence, so retrieval on validation measures generalisation to unseen sentences
(`parse` tells which template made a caption). Shape and motion words are shared by all
templates.

Zero-shot classification: `CLASS_PHRASES` (one natural phrase per class of
`synthetic.CLASS_NAMES`) in `PROMPT_TEMPLATES`, or `class_prompts()`.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import re
from collections.abc import Sequence

import numpy as np

from flux_jax.data import synthetic

SHAPES = ('disc', 'circle', 'ball')
COLORS = ('black', 'white', 'gray', 'red', 'orange', 'brown', 'yellow', 'green', 'cyan',
          'blue', 'purple', 'pink')
# Per class of synthetic.CLASS_NAMES: finite verb phrases and their -ing forms, paired.
VERBS = (
    ('moves to the left', 'moves left', 'slides to the left', 'travels from right to left'),
    ('moves to the right', 'moves right', 'slides to the right',
     'travels from left to right'),
    ('moves up', 'moves upward', 'rises', 'travels from the bottom to the top'),
    ('moves down', 'moves downward', 'sinks', 'travels from the top to the bottom'),
    ('grows', 'grows larger', 'gets bigger', 'expands'),
    ('shrinks', 'becomes smaller', 'gets smaller', 'contracts'),
)
GERUNDS = (
    ('moving to the left', 'moving left', 'sliding to the left',
     'travelling from right to left'),
    ('moving to the right', 'moving right', 'sliding to the right',
     'travelling from left to right'),
    ('moving up', 'moving upward', 'rising', 'travelling from the bottom to the top'),
    ('moving down', 'moving downward', 'sinking', 'travelling from the top to the bottom'),
    ('growing', 'growing larger', 'getting bigger', 'expanding'),
    ('shrinking', 'becoming smaller', 'getting smaller', 'contracting'),
)
TEMPLATES = (
    'a {c} {s} {v}',
    'the {c} {s} {v}',
    'a {c} {s} {v} among some squares',
    'a {c} {s} {g}',
    'video of a {c} {s} {g}',
    'there is a {c} {s} that {v}',
    'over a textured background, a {c} {s} {v}',
    # held out of training:
    '{g}: a {s} coloured {c}',
    'one can see a {c} {s} {g} past the squares',
    'in this clip the {s} is {c} and it {v}',
)
NUM_HELD_OUT = 3
TRAIN_TEMPLATES = tuple(range(len(TEMPLATES) - NUM_HELD_OUT))
HELD_OUT_TEMPLATES = tuple(range(len(TEMPLATES) - NUM_HELD_OUT, len(TEMPLATES)))

# Zero-shot classification: a phrase per class, in prompt templates of their own.
CLASS_PHRASES = ('moving left', 'moving right', 'moving up', 'moving down', 'growing',
                 'shrinking')
PROMPT_TEMPLATES = ('a disc {}', 'a video of a ball {}', 'a circle {}')


def color_name(rgb: Sequence[float] | np.ndarray) -> str:
  """The basic colour term (`COLORS`) of an RGB colour on the 0-255 scale.

  From HSV: value < 0.25 is black; saturation < 0.25 is white (value > 0.8) or gray;
  else the hue decides (degrees): red below 15 or from 345, orange (brown when value
  < 0.6) to 45, yellow to 70, green to 165, cyan to 195, blue to 255, purple to 315,
  pink to 345.
  """
  r, g, b = (float(x) / 255.0 for x in rgb)
  hue, saturation, value = colorsys.rgb_to_hsv(r, g, b)
  hue *= 360.0
  if value < 0.25:
    return 'black'
  if saturation < 0.25:
    return 'white' if value > 0.8 else 'gray'
  if hue < 15 or hue >= 345:
    return 'red'
  if hue < 45:
    return 'brown' if value < 0.6 else 'orange'
  for name, end in (('yellow', 70), ('green', 165), ('cyan', 195), ('blue', 255),
                    ('purple', 315)):
    if hue < end:
      return name
  return 'pink'


@dataclasses.dataclass(frozen=True)
class Caption:
  """A caption and what it says."""
  text: str
  template: int  # index into TEMPLATES
  color: str
  shape: str
  label: int  # the class of synthetic.CLASS_NAMES its motion words name


def caption(template: int, color: str, shape: str, label: int, wording: int) -> Caption:
  """The caption of `TEMPLATES[template]` for a `color` `shape` of class `label`, with
  the `wording`-th verb phrase of the class."""
  text = TEMPLATES[template].format(c=color, s=shape, v=VERBS[label][wording],
                                    g=GERUNDS[label][wording])
  return Caption(text, template, color, shape, label)


def draw_captions(scene: synthetic.Scene, rng: np.random.Generator, count: int,
                  held_out: bool) -> list[Caption]:
  """`count` captions of `scene`, each from another template.

  Train (`held_out=False`): templates from `TRAIN_TEMPLATES` only. Validation
  (`held_out=True`): one held-out template and `count - 1` others from all templates,
  in random order. Shape and wording are drawn per caption.
  """
  if held_out:
    first = int(rng.choice(HELD_OUT_TEMPLATES))
    rest = [t for t in range(len(TEMPLATES)) if t != first]
    templates = [first, *rng.choice(rest, count - 1, replace=False).tolist()]
    templates = rng.permutation(templates).tolist()
  else:
    templates = rng.choice(TRAIN_TEMPLATES, count, replace=False).tolist()
  color = color_name(scene.disc_color)
  return [caption(t, color, SHAPES[int(rng.integers(len(SHAPES)))], scene.label,
                  int(rng.integers(len(VERBS[scene.label]))))
          for t in templates]


@functools.cache
def _patterns() -> tuple[re.Pattern, ...]:
  def group(name, words):
    return f'(?P<{name}>{"|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))})'
  slots = {'c': group('c', COLORS), 's': group('s', SHAPES),
           'v': group('v', [w for ws in VERBS for w in ws]),
           'g': group('g', [w for ws in GERUNDS for w in ws])}
  patterns = []
  for template in TEMPLATES:
    parts = re.split(r'(\{[csvg]\})', template)
    patterns.append(re.compile(''.join(slots[p[1]] if re.fullmatch(r'\{[csvg]\}', p)
                                       else re.escape(p) for p in parts)))
  return tuple(patterns)


def parse(text: str) -> Caption | None:
  """What a caption made here says (template, colour, shape, class); None for any
  other text."""
  for template, pattern in enumerate(_patterns()):
    match = pattern.fullmatch(text)
    if match:
      words = match.groupdict()
      motion, table = (words['v'], VERBS) if 'v' in words else (words['g'], GERUNDS)
      label = next(i for i, ws in enumerate(table) if motion in ws)
      return Caption(text, template, words['c'], words['s'], label)
  return None


def class_prompts() -> list[list[str]]:
  """[class][prompt]: each of `CLASS_PHRASES` in each of `PROMPT_TEMPLATES`."""
  return [[p.format(phrase) for p in PROMPT_TEMPLATES] for phrase in CLASS_PHRASES]
