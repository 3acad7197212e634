"""CLIP's byte-level BPE tokenizer, without torch (SPEC G.3).

Gives the ids of open_clip's `SimpleTokenizer` / `open_clip.tokenize`: text cleaned by
ftfy, HTML-unescaped twice, whitespace collapsed and lower-cased; split by CLIP's
pre-tokenizer; each piece's UTF-8 bytes mapped to printable characters and merged by
the BPE ranks of `bpe_simple_vocab_16e6.txt.gz`. Rows are `<start_of_text>` ids
`<end_of_text>`, padded with 0; a text too long is cut and ends in `<end_of_text>`.

The vocabulary is read from the open_clip_torch package data (installed with
`pip install --no-deps open_clip_torch`, never imported) or from `$FLUX_JAX_BPE_VOCAB`.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np

VOCAB_ENV = 'FLUX_JAX_BPE_VOCAB'
VOCAB_FILE = 'bpe_simple_vocab_16e6.txt.gz'
CONTEXT_LENGTH = 77
SOT_TEXT, EOT_TEXT = '<start_of_text>', '<end_of_text>'
SOT_ID, EOT_ID, PAD_ID = 49406, 49407, 0
VOCAB_SIZE = 49408
# CLIP keeps the first 49152 - 256 - 2 merge lines after the header; the rest are unused.
NUM_MERGES = 49152 - 256 - 2
_END_OF_WORD = '</w>'

_INSTALL_HINT = (f'install it with `pip install --no-deps open_clip_torch ftfy` (the wheel '
                 f'carries open_clip/{VOCAB_FILE}), or point ${VOCAB_ENV} at a copy')


def vocab_path(path: str | os.PathLike | None = None) -> pathlib.Path:
  """The BPE vocabulary: `path`, else `$FLUX_JAX_BPE_VOCAB`, else open_clip's copy."""
  for given, source in ((path, 'path'), (os.environ.get(VOCAB_ENV), f'${VOCAB_ENV}')):
    if given:
      found = pathlib.Path(given)
      if not found.is_file():
        raise FileNotFoundError(f'BPE vocabulary {found} (from {source}) is not a file')
      return found
  # find_spec locates the package without running open_clip/__init__ (it imports
  # torchvision, which is not installed beside our torch).
  spec = importlib.util.find_spec('open_clip')
  for folder in (spec.submodule_search_locations or []) if spec else []:
    found = pathlib.Path(folder) / VOCAB_FILE
    if found.is_file():
      return found
  raise FileNotFoundError(f'CLIP BPE vocabulary {VOCAB_FILE} not found: {_INSTALL_HINT}')


@functools.cache
def _byte_to_char() -> dict[int, str]:
  """A printable character for each byte, so BPE never sees whitespace or controls.

  Bytes that print as themselves keep their character; the others take 256, 257, ...
  in byte order (CLIP's `bytes_to_unicode`). The dict's order is the vocabulary's: the
  printable bytes first, then the others.
  """
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
               *range(ord('®'), ord('ÿ') + 1)]
  table = {b: chr(b) for b in printable}
  spare = iter(range(256, 512))
  for b in range(256):
    if b not in table:
      table[b] = chr(next(spare))
  return table


def _fix_text(text: str) -> str:
  try:
    import ftfy  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f'flux_jax.data.tokenizer needs ftfy to clean text: {_INSTALL_HINT}') from e
  return ftfy.fix_text(text)


def clean_text(text: str) -> str:
  """CLIP's cleaning ('lower'): ftfy, HTML-unescape twice, collapse whitespace, lower."""
  text = html.unescape(html.unescape(_fix_text(text)))
  return ' '.join(text.split()).lower()


_PRE_TEXT_DROP = re.compile(r'[,.\'!?"()*#:;~]')
_PRE_TEXT_SPACES = re.compile(r'\s{2,}')


def clean_caption(text: str, max_words: int | None = None) -> str:
  """InternVideo2's `pre_text` on a caption, applied before tokenizing (SPEC G.3).

  Lower-case; drop ,.'!?"()*#:;~ ; '-' and '/' become spaces and '<person>' 'person';
  runs of two or more whitespace characters become one space (a lone tab or newline
  stays, as in the official code); trailing newlines and edge spaces go; then at most
  `max_words` space-separated words.
  """
  if not isinstance(text, str):
    raise TypeError(f'clean_caption: expected a str caption, got {type(text).__name__}')
  text = _PRE_TEXT_DROP.sub('', text.lower())
  text = text.replace('-', ' ').replace('/', ' ').replace('<person>', 'person')
  text = _PRE_TEXT_SPACES.sub(' ', text).rstrip('\n').strip(' ')
  if max_words:
    text = ' '.join(text.split(' ')[:max_words])
  return text


class Tokenizer:
  """CLIP's BPE over one vocabulary file; ids equal open_clip's `SimpleTokenizer`."""

  def __init__(self, path: str | os.PathLike | None = None, bpe_cache_size: int = 1 << 16):
    try:
      import regex  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      # `re` has no \p{L} / \p{N}; its \w and \d classes split some scripts differently.
      raise ImportError('flux_jax.data.tokenizer needs the `regex` package: '
                        'pip install regex') from e
    self.path = vocab_path(path)
    # newline='': split on '\n' only, as open_clip does.
    with gzip.open(self.path, 'rt', encoding='utf-8', newline='') as f:
      lines = f.read().split('\n')
    merges = [tuple(line.split()) for line in lines[1:1 + NUM_MERGES]]  # line 0 is a header
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
      raise ValueError(f'{self.path}: expected {NUM_MERGES} merge lines of two symbols each '
                       f'after the header, got {len(merges)}')
    byte_chars = list(_byte_to_char().values())
    vocab = [*byte_chars, *(c + _END_OF_WORD for c in byte_chars), *(a + b for a, b in merges),
             SOT_TEXT, EOT_TEXT]
    self.encoder = {piece: i for i, piece in enumerate(vocab)}
    self.decoder = dict(enumerate(vocab))
    self.ranks = {m: i for i, m in enumerate(merges)}
    self.bpe_cache_size = bpe_cache_size
    self._byte_decoder = {c: b for b, c in _byte_to_char().items()}
    # CLIP's pre-tokenizer. The special tokens come first, so a caption that spells
    # '<end_of_text>' gets its id, as in open_clip.
    self._pattern = regex.compile(
        f'{regex.escape(SOT_TEXT)}|{regex.escape(EOT_TEXT)}'
        r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
    self._bpe_word = functools.lru_cache(maxsize=bpe_cache_size)(self._merge)

  def __reduce__(self):
    # The lru cache does not pickle; grain workers rebuild from the file.
    return Tokenizer, (self.path, self.bpe_cache_size)

  def _merge(self, word: str) -> tuple[str, ...]:
    """BPE of one pre-token (already byte-mapped): the lowest-ranked pair first."""
    if word in (SOT_TEXT, EOT_TEXT):
      return (word,)
    parts = [*word[:-1], word[-1] + _END_OF_WORD]
    no_merge = len(self.ranks)
    while len(parts) > 1:
      best = min(zip(parts, parts[1:]), key=lambda pair: self.ranks.get(pair, no_merge))
      if best not in self.ranks:
        break
      merged, i = [], 0
      while i < len(parts):  # every non-overlapping occurrence, left to right
        if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
          merged.append(parts[i] + parts[i + 1])
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    return tuple(parts)

  def encode(self, text: str) -> list[int]:
    """Ids of a cleaned text, without the start and end tokens."""
    to_char = _byte_to_char()
    ids = []
    for piece in self._pattern.findall(clean_text(text)):
      word = ''.join(to_char[b] for b in piece.encode('utf-8'))
      ids.extend(self.encoder[p] for p in self._bpe_word(word))
    return ids

  def decode(self, ids: Sequence[int]) -> str:
    """Text of ids, '</w>' as a space; specials and padding decode as their pieces."""
    chars = ''.join(self.decoder[int(i)] for i in ids)
    data = bytes(self._byte_decoder[c] for c in chars)
    return data.decode('utf-8', errors='replace').replace(_END_OF_WORD, ' ')

  def __call__(self, texts: str | Sequence[str],
               context_length: int = CONTEXT_LENGTH) -> np.ndarray:
    """int32 `[N, context_length]`: start, ids, end, zeros; long texts cut, end kept."""
    if context_length < 2:
      raise ValueError(f'context_length={context_length}: needs room for the start and end tokens')
    if isinstance(texts, str):
      texts = [texts]
    out = np.full((len(texts), context_length), PAD_ID, np.int32)  # [N, context_length]
    for row, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f'tokenize: texts[{row}] is a {type(text).__name__}, expected str')
      ids = [SOT_ID, *self.encode(text)][:context_length - 1] + [EOT_ID]
      out[row, :len(ids)] = ids
    return out


@functools.cache
def get_tokenizer(path: str | None = None) -> Tokenizer:
  """The tokenizer of `vocab_path(path)`, built once per process."""
  return Tokenizer(path)


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
  """CLIP ids of `texts`: int32 `[N, context_length]` (open_clip.tokenize without torch)."""
  return get_tokenizer()(texts, context_length)
