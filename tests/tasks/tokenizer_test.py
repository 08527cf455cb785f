"""tokenizer: the converter's rules (docs/data.md) on real Stack Exchange posts
and on the cases each rule exists for."""

import os
import sys

import pytest

from tasks.stackoverflow import convert_lib
from tasks.stackoverflow import tokenizer
import conftest


def _real_post(site: str, post_id: int) -> list[str]:
  path = os.path.join(conftest.shared_data_dir(), 'stackexchange', site, 'Posts.xml')
  for post in convert_lib.iter_posts(path, convert_lib.ConversionStats()):
    if post.post_id == post_id:
      return convert_lib.html_to_sentences(post.body)
  raise AssertionError(f'post {post_id} not in {path}')


def _tokens(sentences):
  return [t for s in sentences for t in s.split(' ')]


def test_real_posts():
  # "Führer" written with a combining diaeresis: one word, composed.
  history = _tokens(_real_post('history.meta.stackexchange.com', 679))
  assert 'führer' in history and not any('\u0308' in t for t in history)
  # Zero-width spaces after a French sentence: gone, the words around intact.
  french = _real_post('french.meta.stackexchange.com', 400)
  assert not any(ch in s for s in french for ch in '\u200b\u200c\u200d\ufeff')
  assert 'commentaires' in _tokens(french)
  # A typographic apostrophe (it’s).
  assert "it's" in _tokens(_real_post('3dprinting.meta.stackexchange.com', 6))
  # A URL shown as link text: one token.
  blog = _tokens(_real_post('3dprinting.meta.stackexchange.com', 16))
  assert '<url>' in blog and not any(t in ('https', '//', 'shopping') for t in blog)
  # An identifier in inline code stays whole.
  assert 'transaction_witness_sets' in _tokens(_real_post('cardano.stackexchange.com', 85))
  # A CJK character stays a CJK token, not a byte or an escape.
  beer = _tokens(_real_post('beer.stackexchange.com', 621))
  assert any('生' in t for t in beer)


@pytest.mark.parametrize('text,sentences', [
    ('Königsberg and K\u006f\u0308nigsberg.', ['königsberg and königsberg .']),
    ('It’s and it\'s and it\u02bcs', ["it's and it's and it's"]),
    ('zero\u200bwidth, soft\u00adhyphen \ufeffbom', ['zerowidth , softhyphen bom']),
    ('See https://example.com/a_b?x=1. Next: www.foo.org, ok',
     ['see <url> .', 'next : <url> , ok']),
    ('中文分词。日本語です！ 次', ['中文分词 。', '日本語です !', '次']),
    ('Version 3.14, 1,000 items, 10.0.1 and e.g.x', ['version 3.14 , 1,000 items , 10.0.1 and e . g . x']),
    ('snake_case and std::vector<int> on x86', ['snake_case and std : : vector < int > on x86']),
    ('नमस्ते दुनिया', ['नमस्ते दुनिया']),
    ('Line one\nline two!Not split', ['line one', 'line two ! not split']),
])
def test_rules(text, sentences):
  assert tokenizer.sentences(text) == sentences


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
