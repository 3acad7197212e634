"""flux_jax.data.tokenizer: ids equal to open_clip's SimpleTokenizer (SPEC G.3)."""

import importlib.util
import pickle
import subprocess
import sys

import numpy as np
import pytest

from flux_jax.data import tokenizer as tk

CORPUS = [
    'a photo of a dog',
    'A man is PLAYING the guitar on stage.',
    "The kid's toy isn't here; they'll find it, won't they? I'm sure we'd know.",
    'Café, naïve résumé — façade über straße; ÆØÅ æøå, Ελληνικά, кириллица.',
    '一个男人在弹吉他。 日本語のテキスト、カタカナ。 한국어 문장입니다.',
    '🐶🐱 emoji 👍🏽 family 👨‍👩‍👧 flags 🇫🇷 ❤️ ★☆',
    'Tom &amp; Jerry &lt;3 &quot;cartoon&quot; &amp;quot;double&amp;quot; &#39;x&#39; &nbsp;!',
    'mojibake: cafÃ© and â€œquotesâ€\x9d',
    'numbers 12345, 3.14159, 1st 2nd 3rd, ½ ¾ ² Ⅻ ٣ ४, 10:30pm, $1,000,000',
    'punct!!! ??? ... --- /// ((())) [x] {y} <z> @#%^&*_+=|\\`~',
    "  leading\tand\ttrailing \n\n whitespace   collapsed \r\n ",
    'hyphen-ated and snake_case and CamelCaseWords and URLs http://x.org/a?b=c',
    '<start_of_text> literal specials <end_of_text> in a caption',
    'ſ ǅ ß İstanbul ﬁne ＦＵＬＬＷＩＤＴＨ',
    '',
    ' ',
    '\t\n \r ',
    ('a very long caption describing a person who walks through a crowded market, '
     'stops at a stall selling fresh fruit, picks up an orange, talks to the vendor, '
     'pays with coins, and then continues walking towards the river where boats are '
     'moored and children are playing football on the grass near an old stone bridge '
     'while the sun sets behind the hills and the lights of the town come on one by one.'),
    ' '.join(['supercalifragilisticexpialidocious'] * 40),
]


def random_corpus(n=60, seed=0):
  """Random strings over letters of several scripts, digits, marks, emoji, whitespace."""
  rng = np.random.default_rng(seed)
  alphabet = list('abcXYZ019 \t\n.,;:!?\'"-_/&#<>()') + list('éüñçÅßøØ') + list(
      '中文日本カナ한글') + list('½²٣Ⅻ') + ['\u0301', '\u200d', '😀', '🎬', '&amp;', "'s", "'ll"]
  return [''.join(rng.choice(alphabet, rng.integers(0, 40))) for _ in range(n)]


@pytest.fixture(scope='module')
def tok():
  try:
    return tk.get_tokenizer()
  except FileNotFoundError as e:
    pytest.skip(f'CLIP BPE vocabulary not installed: {e}')
  except ImportError as e:
    pytest.skip(f'tokenizer dependency missing: {e}')


@pytest.fixture(scope='module')
def reference():
  """open_clip's SimpleTokenizer, loaded from its file without open_clip/__init__.

  The package __init__ imports torchvision, which does not import beside our torch;
  tokenizer.py itself needs only torch, ftfy, regex and numpy.
  """
  for name in ('torch', 'ftfy', 'regex'):
    pytest.importorskip(name, reason=f'{name} is needed by open_clip/tokenizer.py')
  spec = importlib.util.find_spec('open_clip')
  if spec is None:
    pytest.skip('open_clip_torch not installed (pip install --no-deps open_clip_torch ftfy)')
  path = f'{spec.submodule_search_locations[0]}/tokenizer.py'
  module_spec = importlib.util.spec_from_file_location('_open_clip_tokenizer_ref', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.SimpleTokenizer()


def test_vocabulary(tok):
  assert len(tok.encoder) == tk.VOCAB_SIZE
  assert tok.encoder[tk.SOT_TEXT] == tk.SOT_ID
  assert tok.encoder[tk.EOT_TEXT] == tk.EOT_ID
  assert len(tok.ranks) == tk.NUM_MERGES


def test_vocabulary_equals_open_clip(tok, reference):
  assert tok.encoder == reference.encoder
  assert tok.ranks == reference.bpe_ranks


@pytest.mark.parametrize('corpus', ['fixed', 'random'])
def test_encode_matches_open_clip(tok, reference, corpus):
  texts = CORPUS if corpus == 'fixed' else random_corpus()
  for text in texts:
    assert tok.encode(text) == reference.encode(text), repr(text)


@pytest.mark.parametrize('context_length', [77, 16, 2])
def test_tokenize_matches_open_clip(tok, reference, context_length):
  texts = CORPUS + random_corpus(20, seed=1)
  ours = tok(texts, context_length)
  want = reference(texts, context_length).numpy()
  assert ours.dtype == np.int32 and ours.shape == (len(texts), context_length)
  np.testing.assert_array_equal(ours, want)


def test_module_tokenize(tok):
  del tok  # only for the skip when the vocabulary is missing
  ids = tk.tokenize('a photo of a dog')
  assert ids.shape == (1, tk.CONTEXT_LENGTH) and ids.dtype == np.int32
  assert tk.tokenize([]).shape == (0, tk.CONTEXT_LENGTH)


def test_long_text_is_cut_and_ends_with_eot(tok):
  ids = tok(CORPUS[-2:], 77)
  assert len(tok.encode(CORPUS[-2])) > 77
  assert (ids[:, 0] == tk.SOT_ID).all() and (ids[:, -1] == tk.EOT_ID).all()
  assert (ids != tk.PAD_ID).all()
  np.testing.assert_array_equal(ids[0, 1:-1], tok.encode(CORPUS[-2])[:75])


@pytest.mark.parametrize('text', ['', ' ', '\t\n \r '])
def test_empty_text(tok, text):
  want = np.zeros((1, 8), np.int32)
  want[0, :2] = tk.SOT_ID, tk.EOT_ID
  np.testing.assert_array_equal(tok(text, 8), want)


def test_bad_inputs(tok):
  with pytest.raises(ValueError, match='context_length=1'):
    tok('a dog', 1)
  with pytest.raises(TypeError, match=r'texts\[1\] is a bytes'):
    tok(['a dog', b'a cat'])


def test_decode_round_trip(tok):
  rng = np.random.default_rng(0)
  letters = np.array(list('abcdefghijklmnopqrstuvwxyz'))
  texts = ['a photo of a dog', 'the quick brown fox jumps over the lazy dog'] + [
      ' '.join(''.join(rng.choice(letters, rng.integers(1, 12))) for _ in range(rng.integers(1, 9)))
      for _ in range(50)]
  for text in texts:
    # Every word ends in '</w>', which decodes as a space.
    assert tok.decode(tok.encode(text)) == text + ' ', text


def test_pickle_rebuilds(tok):
  clone = pickle.loads(pickle.dumps(tok))
  assert clone.path == tok.path
  assert clone.encode(CORPUS[1]) == tok.encode(CORPUS[1])


@pytest.mark.parametrize('caption, want', [
    ('A man, playing the guitar!', 'a man playing the guitar'),
    ('"Quoted" (text) *with* #tags: yes; no~', 'quoted text with tags yes no'),
    ("It's a dog's life?", 'its a dogs life'),
    ('state-of-the-art and/or', 'state of the art and or'),
    ('  many     spaces  ', 'many spaces'),
    ('a - b', 'a b'),
    ('<person> walks', 'person walks'),
    ('ends with newline\n', 'ends with newline'),
    ('one\ttab stays', 'one\ttab stays'),
    ('Ünïcödé CAPS & more', 'ünïcödé caps & more'),
    ('', ''),
])
def test_clean_caption(caption, want):
  assert tk.clean_caption(caption) == want


def test_clean_caption_max_words():
  assert tk.clean_caption('One, two - three four', max_words=3) == 'one two three'


def test_vocab_path_errors(monkeypatch, tmp_path):
  missing = tmp_path / 'nope.txt.gz'
  with pytest.raises(FileNotFoundError, match='nope.txt.gz'):
    tk.vocab_path(missing)
  monkeypatch.setenv(tk.VOCAB_ENV, str(missing))
  with pytest.raises(FileNotFoundError, match=tk.VOCAB_ENV):
    tk.vocab_path()
  monkeypatch.delenv(tk.VOCAB_ENV)
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  with pytest.raises(FileNotFoundError, match='pip install --no-deps open_clip_torch') as e:
    tk.vocab_path()
  assert tk.VOCAB_ENV in str(e.value)


def test_vocab_path_from_env(tok, monkeypatch):
  monkeypatch.setenv(tk.VOCAB_ENV, str(tok.path))
  assert tk.vocab_path() == tok.path


def test_missing_ftfy_is_named(monkeypatch):
  monkeypatch.setitem(sys.modules, 'ftfy', None)  # import ftfy now raises ImportError
  with pytest.raises(ImportError, match='ftfy'):
    tk.clean_text('a dog')


def test_import_needs_neither_torch_nor_ftfy():
  code = ('import sys; sys.modules["ftfy"] = None; sys.modules["torch"] = None; '
          'import flux_jax.data.tokenizer; '
          'assert "open_clip" not in sys.modules and "jax" not in sys.modules')
  subprocess.run([sys.executable, '-c', code], check=True)
