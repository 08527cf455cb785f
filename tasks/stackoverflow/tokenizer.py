"""How the converter turns the text of a post into sentences of tokens.

The rules (docs/data.md states them for users), applied in this order:
1. Unicode NFKC normalization: a letter and its combining accent become one
   letter ("o" + U+0308 -> "ö"), full-width forms and ligatures plain ones.
2. Zero-width and other format characters (Unicode category Cf: U+200B,
   U+200C, U+200D, U+FEFF, soft hyphen, direction marks) and control
   characters other than line breaks and tabs are dropped.
3. Apostrophe variants (U+2019, U+2018, U+02BC) become "'".
4. Lower-cased.
5. Sentences end after ".", "!" or "?" followed by whitespace, after the
   ideographic "。", "！", "？" (followed by anything), and at every line
   break (HTML block boundaries are line breaks); "3.14" and "e.g.x" do not
   end one.
6. Tokens, left to right:
   - a URL (`http://`, `https://` or `www.` up to the next whitespace, less
     trailing punctuation) is the one token `<url>`;
   - a number with inner separators (`3.14`, `1,000`, `10.0.1`) is one token;
   - a word is a maximal run of letters, combining marks, digits and
     underscores of any script, with inner apostrophes: "königsberg",
     "it's", "snake_case", "x86", and a run of CJK characters (no spaces to
     split at) are one token each;
   - any other character that is not whitespace (punctuation, symbols,
     emoji) is a token of its own.
Tokens are joined by single spaces; empty sentences are dropped.
"""

import functools
import re
import sys
import unicodedata

URL_TOKEN = '<url>'
_APOSTROPHES = str.maketrans({'\u2019': "'", '\u2018': "'", '\u02bc': "'"})
_SENTENCE_END = re.compile(r'(?<=[.!?])\s+|(?<=[\u3002\uff01\uff1f])\s*|\n+')
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"]*[^\s<>\".,;:!?)\]}'*]")


def _ranges(predicate) -> str:
  """A regex character-class body of every code point where `predicate(chr)`."""
  ranges, start = [], None
  for code in range(sys.maxunicode + 2):
    hit = code <= sys.maxunicode and predicate(chr(code))
    if hit and start is None:
      start = code
    elif not hit and start is not None:
      ranges.append(f'{re.escape(chr(start))}-{re.escape(chr(code - 1))}')
      start = None
  return ''.join(ranges)


@functools.cache
def _patterns() -> tuple[re.Pattern, re.Pattern]:
  """(characters dropped by rule 2, tokens of rule 6), built once per process
  from the Unicode database (about a second).

  Python's `\\w` covers letters, digits and the underscore of every script
  but not combining marks (Devanagari vowel signs, accents NFKC cannot
  compose), so their ranges are added to words.
  """
  drop = _ranges(lambda ch: (category := unicodedata.category(ch)) == 'Cf' or (
      category == 'Cc' and ch not in '\n\t'))
  marks = _ranges(lambda ch: unicodedata.category(ch).startswith('M'))
  word = f'[\\w{marks}]+'
  tokens = re.compile(f"({_URL.pattern})|\\d+(?:[.,]\\d+)+(?!\\w)|{word}(?:'{word})*|\\S")
  return re.compile(f'[{drop}]'), tokens


def _clean(text: str) -> str:
  """Rules 1-4."""
  text = unicodedata.normalize('NFKC', text)
  return _patterns()[0].sub('', text).translate(_APOSTROPHES).lower()


def tokenize(sentence: str) -> list[str]:
  """The tokens of one sentence of cleaned text (rule 6)."""
  tokens = []
  for match in _patterns()[1].finditer(sentence):
    tokens.append(URL_TOKEN if match.group(1) else match.group(0))
  return tokens


def sentences(text: str) -> list[str]:
  """`text` (a post's text, HTML already removed) as sentences of tokens
  joined by single spaces (rules 1-6); empty sentences dropped."""
  result = []
  for chunk in _SENTENCE_END.split(_clean(text)):
    tokens = tokenize(chunk)
    if tokens:
      result.append(' '.join(tokens))
  return result
