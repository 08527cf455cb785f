"""Stack Exchange dump -> TFF StackOverflow SQLite, read back through TFF's loader."""

import collections
import hashlib
import os
import sqlite3
import sys

import pytest
import tensorflow_federated as tff

from tasks.stackoverflow import convert_lib
from tasks.stackoverflow import task as so_task

# A hand-written dump with the real-world quirks: BOM, DOCTYPE, CRLF, HTML
# entities, code blocks, an answer whose question is missing, a missing owner,
# a non-question/answer post, and malformed rows.
_SITE_A = (
    '\ufeff<?xml version="1.0" encoding="utf-8"?>\r\n'
    "<!DOCTYPE posts SYSTEM 'posts.dtd'>\r\n"
    '<posts>\r\n'
    '  <row Id="1" PostTypeId="1" CreationDate="2020-01-01T00:00:00.000" Score="3" '
    'Body="&lt;p&gt;How do I print &amp;amp; flush? It fails.&lt;/p&gt;&#xA;'
    '&lt;pre&gt;&lt;code&gt;secret_code_token()&lt;/code&gt;&lt;/pre&gt;&#xA;'
    '&lt;p&gt;I use &lt;code&gt;printf&lt;/code&gt; now.&lt;/p&gt;" OwnerUserId="7" '
    'Title="Printing &amp;amp; flushing" Tags="&lt;c&gt;&lt;io&gt;" />\r\n'
    '  <row Id="2" PostTypeId="2" ParentId="1" CreationDate="2020-01-02T00:00:00.000" '
    'Score="1" Body="&lt;p&gt;Call fflush. Done!&lt;/p&gt;" OwnerUserId="8" />\r\n'
    '  <row Id="3" PostTypeId="2" ParentId="999" CreationDate="2020-01-03T00:00:00.000" '
    'Score="0" Body="&lt;p&gt;Orphan answer here.&lt;/p&gt;" OwnerUserId="8" />\r\n'
    '  <row Id="4" PostTypeId="1" CreationDate="2020-01-04T00:00:00.000" Score="0" '
    'Body="&lt;p&gt;Nobody owns this.&lt;/p&gt;" Title="Ghost" Tags="&lt;x&gt;" />\r\n'
    '  <row Id="5" PostTypeId="5" CreationDate="2020-01-05T00:00:00.000" Score="0" '
    'Body="&lt;p&gt;Tag wiki.&lt;/p&gt;" OwnerUserId="7" />\r\n'
    '  <row Id="6" PostTypeId="1" Body="no creation date" />\r\n'
    '  <row Id="oops" PostTypeId="1" CreationDate="2020-01-06T00:00:00.000" Body="x" />\r\n'
    '  <row Id="7" PostTypeId="1" CreationDate="2020-02-01T00:00:00.000" Score="2" '
    'Body="&lt;p&gt;Second question. Another sentence?&lt;/p&gt;" OwnerUserId="7" '
    'Title="Second" Tags="|c|perf|" />\r\n'
    '  <row Id="8" PostTypeId="2" ParentId="7" CreationDate="2020-02-02T00:00:00.000" '
    'Score="0" Body="&lt;p&gt;Use a profiler.&lt;/p&gt;" OwnerUserId="8" />\r\n'
    '  <row Id="9" PostTypeId="2" ParentId="7" CreationDate="2020-03-01T00:00:00.000" '
    'Score="0" Body="&lt;p&gt;Late answer.&lt;/p&gt;" OwnerUserId="7" />\r\n'
    '</posts>\r\n'
)
# One user with a single post: never kept (no train/test split possible).
_SITE_B = (
    '<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
    '  <row Id="1" PostTypeId="1" CreationDate="2021-01-01T00:00:00.000" Score="0" '
    'Body="&lt;p&gt;One. Two. Three.&lt;/p&gt;" OwnerUserId="1" Title="T" Tags="&lt;a&gt;" />\n'
    '</posts>\n'
)


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
  root = tmp_path_factory.mktemp('dumps')
  for site, text in (('a.stackexchange.com', _SITE_A), ('b.stackexchange.com', _SITE_B)):
    os.makedirs(root / site)
    (root / site / 'Posts.xml').write_bytes(text.encode('utf-8'))
  out = tmp_path_factory.mktemp('cache')
  stats = convert_lib.convert([str(root)], str(out), min_examples=2)
  return stats, str(out)


def test_counts_of_kept_and_dropped_rows(converted):
  stats, _ = converted
  assert stats.sites == 2
  assert stats.malformed_rows == 2          # no CreationDate, and the non-integer Id
  assert stats.missing_owner == 1
  assert stats.other_post_types == 1
  assert stats.orphan_answers == 1
  assert (stats.questions, stats.answers) == (4, 4)
  assert stats.clients_seen == 3 and stats.clients_kept == 2


def _examples(cache_dir):
  train, heldout, test = tff.simulation.datasets.stackoverflow.load_data(cache_dir=cache_dir)
  out = collections.defaultdict(list)
  for split_name, data in (('train', train), ('heldout', heldout), ('test', test)):
    for cid in data.client_ids:
      for ex in data.create_tf_dataset_for_client(cid):
        out[cid].append((split_name, {k: v.numpy() for k, v in ex.items()}))
  return out


def test_examples_through_tff_loader(converted):
  _, cache_dir = converted
  examples = _examples(cache_dir)
  assert sorted(examples) == ['a.stackexchange.com/7', 'a.stackexchange.com/8']
  tokens = [ex['tokens'].decode() for exs in examples.values() for _, ex in exs]
  # Entities decoded, lower-cased, punctuation split, sentences split.
  assert 'how do i print & flush ?' in tokens
  assert 'it fails .' in tokens
  assert 'i use printf now .' in tokens           # inline <code> kept
  assert not any('secret_code_token' in t for t in tokens)  # <pre> dropped
  answer = next(ex for _, ex in examples['a.stackexchange.com/8']
                if ex['tokens'] == b'call fflush .')
  assert answer['type'] == b'answer'
  assert answer['title'] == b'Printing &amp; flushing'  # Title attribute is HTML text
  assert answer['tags'] == b'c|io'
  orphan = next(ex for _, ex in examples['a.stackexchange.com/8']
                if ex['tokens'] == b'orphan answer here .')
  assert orphan['title'] == b'' and orphan['tags'] == b''
  second = next(ex for _, ex in examples['a.stackexchange.com/7']
                if ex['tokens'] == b'second question .')
  assert second['tags'] == b'c|perf' and second['score'] == 2


def test_split_is_per_client_by_date_and_post(converted):
  _, cache_dir = converted
  for cid, exs in _examples(cache_dir).items():
    splits = {s for s, _ in exs}
    assert {'train', 'test'} <= splits, cid
    last_train = max(ex['creation_date'] for s, ex in exs if s == 'train')
    first_test = min(ex['creation_date'] for s, ex in exs if s == 'test')
    assert last_train < first_test
    by_date = collections.defaultdict(set)   # all sentences of a post share a date
    for s, ex in exs:
      by_date[ex['creation_date']].add(s)
    assert all(len(s) == 1 for s in by_date.values())


def test_word_counts_come_from_train_split(converted):
  _, cache_dir = converted
  counts = collections.Counter()
  train, _, _ = tff.simulation.datasets.stackoverflow.load_data(cache_dir=cache_dir)
  for cid in train.client_ids:
    for ex in train.create_tf_dataset_for_client(cid):
      counts.update(ex['tokens'].numpy().decode().split(' '))
  with open(os.path.join(cache_dir, convert_lib.WORD_COUNT_FILENAME)) as f:
    written = {w: int(c) for w, c in (line.rsplit(' ', 1) for line in f)}
  assert written == dict(counts)
  assert convert_lib.load_vocab(cache_dir, 3) == [
      w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:3]]


def test_tff_schema_only(converted):
  _, cache_dir = converted
  conn = sqlite3.connect(os.path.join(cache_dir, convert_lib.DATABASE_FILENAME))
  cols = [r[1] for r in conn.execute('PRAGMA table_info(examples)')]
  assert cols == ['split_name', 'client_id', 'serialized_example_proto']
  tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
  assert tables == {'examples', 'client_metadata', 'client_groups'}


@pytest.mark.parametrize('content,message', [
    (b'<users>\n<row Id="1" />\n</users>\n', 'root element is <users>'),
    (b'<posts>\n<row Id="1" Body="\xff\xfe" />\n</posts>\n', 'not UTF-8'),
    (_SITE_A.encode()[:len(_SITE_A) // 2], 'truncated'),
    (b'<posts>\n<row Id="1" Body="x />\n<row Id="2" />\n</posts>\n', ':3:0: not well-formed'),
], ids=['other_root', 'not_utf8', 'truncated', 'unclosed_attribute'])
def test_malformed_file_is_a_clear_error(tmp_path, content, message):
  site = tmp_path / 'bad.stackexchange.com'
  os.makedirs(site)
  (site / 'Posts.xml').write_bytes(content)
  with pytest.raises(convert_lib.MalformedDumpError, match=f'bad.stackexchange.com/Posts.xml.*{message}'):
    convert_lib.convert([str(tmp_path)], str(tmp_path / 'out'))
  assert not os.path.exists(tmp_path / 'out' / convert_lib.DATABASE_FILENAME)


def test_any_line_layout_gives_the_same_rows(tmp_path):
  """All rows on one line (valid XML) parse as one row per line."""
  one_line = _SITE_A.replace('\r\n', ' ')
  counts = []
  for name, text in (('lines', _SITE_A), ('one_line', one_line)):
    path = tmp_path / name / 'Posts.xml'
    os.makedirs(path.parent)
    path.write_text(text, encoding='utf-8')
    stats = convert_lib.ConversionStats()
    posts = list(convert_lib.iter_posts(str(path), stats))
    counts.append((len(posts), stats.rows, stats.malformed_rows, [p.post_id for p in posts]))
  assert counts[0] == counts[1] and counts[0][1] == 10


def test_duplicate_and_incomplete_site_folders_are_refused(tmp_path, converted):
  site = tmp_path / 'a' / 'x.stackexchange.com'
  os.makedirs(site)
  (site / 'Posts.xml').write_text(_SITE_B)
  with pytest.raises(ValueError, match="given more than once: \\['x.stackexchange.com'\\]"):
    convert_lib.find_site_dirs([str(site), str(tmp_path / 'a')])
  os.makedirs(tmp_path / 'a' / 'y.stackexchange.com')
  with pytest.raises(FileNotFoundError, match="without a Posts.xml: \\['y.stackexchange.com'\\]"):
    convert_lib.find_site_dirs([str(tmp_path / 'a')])


@pytest.fixture
def dumps(tmp_path):
  root = tmp_path / 'dumps'
  for site, text in (('a.stackexchange.com', _SITE_A), ('b.stackexchange.com', _SITE_B)):
    os.makedirs(root / site)
    (root / site / 'Posts.xml').write_bytes(text.encode('utf-8'))
  return root


def _quiet(*args):
  del args


def test_a_conversion_records_what_it_was_made_from_and_is_reused(dumps, tmp_path):
  out = str(tmp_path / 'out')
  stats = convert_lib.ensure_converted([str(dumps)], out, min_examples=2, log=_quiet)
  record = convert_lib.read_record(out)
  assert record['min_examples'] == 2
  assert record['converter_version'] == convert_lib.CONVERTER_VERSION
  assert record['sites'] == {
      site: hashlib.sha256((dumps / site / 'Posts.xml').read_bytes()).hexdigest()
      for site in ('a.stackexchange.com', 'b.stackexchange.com')}
  assert record['contents']['clients'] == stats.clients_kept
  db = os.path.join(out, convert_lib.DATABASE_FILENAME)
  written = os.stat(db).st_mtime_ns
  assert convert_lib.ensure_converted([str(dumps)], out, min_examples=2, log=_quiet) is None
  assert os.stat(db).st_mtime_ns == written


def test_other_dumps_or_settings_are_refused_naming_both(dumps, tmp_path):
  out = str(tmp_path / 'out')
  convert_lib.ensure_converted([str(dumps)], out, min_examples=2, log=_quiet)
  with pytest.raises(convert_lib.ConversionMismatchError,
                     match=r'`min_examples`=2 from 2 site.*asks for `min_examples`=3 from 2 site'):
    convert_lib.ensure_converted([str(dumps)], out, min_examples=3, log=_quiet)
  with pytest.raises(convert_lib.ConversionMismatchError,
                     match=r"from 2 site.*asks for .* from 1 site.*sites only there: "
                           r"\['b.stackexchange.com'\]"):
    convert_lib.ensure_converted([str(dumps / 'a.stackexchange.com')], out, min_examples=2,
                                 log=_quiet)
  (dumps / 'b.stackexchange.com' / 'Posts.xml').write_text(_SITE_B.replace('Three', 'Four'))
  with pytest.raises(convert_lib.ConversionMismatchError,
                     match=r"dumps changed since: \['b.stackexchange.com'\]"):
    convert_lib.ensure_converted([str(dumps)], out, min_examples=2, log=_quiet)
  assert convert_lib.read_record(out)['min_examples'] == 2  # Left as it was.


def test_a_conversion_without_its_record_is_named_not_reused(dumps, tmp_path):
  out = str(tmp_path / 'out')
  convert_lib.ensure_converted([str(dumps)], out, min_examples=2, log=_quiet)
  os.remove(os.path.join(out, convert_lib.RECORD_FILENAME))
  with pytest.raises(convert_lib.ConversionMismatchError, match='older version'):
    convert_lib.ensure_converted([str(dumps)], out, min_examples=2, log=_quiet)
  assert os.path.exists(os.path.join(out, convert_lib.DATABASE_FILENAME))


def test_a_setting_that_keeps_no_client_is_refused_leaving_nothing(dumps, tmp_path, converted):
  _, cache_dir = converted
  with sqlite3.connect(os.path.join(cache_dir, convert_lib.DATABASE_FILENAME)) as conn:
    largest = conn.execute('SELECT SUM(num_examples) AS n FROM client_metadata '
                           'GROUP BY client_id ORDER BY n DESC').fetchone()[0]
  out = tmp_path / 'new' / 'data'
  with pytest.raises(convert_lib.NoClientsError,
                     match=rf'`min_examples`={largest + 1} keeps no client of the 2 site\(s\): '
                           rf'the largest client has {largest} sentences'):
    convert_lib.ensure_converted([str(dumps)], str(out), min_examples=largest + 1, log=_quiet)
  assert not os.path.exists(tmp_path / 'new')
  # The same folder then takes a conversion with a setting that keeps clients.
  assert convert_lib.ensure_converted([str(dumps)], str(out), min_examples=largest,
                                      log=_quiet).clients_kept >= 1


def test_an_empty_database_is_named_not_loaded(tmp_path):
  """An older version wrote an empty database when no client was kept; TFF's
  loader then fails with a bare StopIteration."""
  with sqlite3.connect(tmp_path / convert_lib.DATABASE_FILENAME) as conn:
    conn.execute('CREATE TABLE examples (split_name TEXT, client_id TEXT, '
                 'serialized_example_proto BLOB)')
    conn.execute('CREATE TABLE client_metadata (client_id TEXT, split_name TEXT, '
                 'num_examples INTEGER)')
  (tmp_path / convert_lib.WORD_COUNT_FILENAME).write_text('')
  with pytest.raises(ValueError, match='holds no client: an empty conversion'):
    so_task.create_task(str(tmp_path))


def test_missing_input_and_existing_output(tmp_path, converted):
  with pytest.raises(FileNotFoundError, match='Posts.xml'):
    convert_lib.convert([str(tmp_path)], str(tmp_path / 'out'))
  _, cache_dir = converted
  with pytest.raises(FileExistsError, match='overwrite'):
    convert_lib.convert([str(tmp_path)], cache_dir)


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
