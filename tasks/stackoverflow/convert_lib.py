"""Converts Stack Exchange dumps (`<site>/Posts.xml`) into TFF's StackOverflow SQLite format.

The output is read only through TFF's real loader,
`tff.simulation.datasets.stackoverflow.load_data(cache_dir=...)`, which uses
`<cache_dir>/stackoverflow.sqlite` as is when present. The construction follows
TFF's StackOverflow dataset:

* an example is one sentence of a question or answer body: HTML stripped
  (code blocks in `<pre>` dropped, inline `<code>` kept as text), entities
  decoded, split into sentences and tokens by the rules of `tokenizer`
  (Unicode words, numbers, URLs as `<url>`), tokens joined by single spaces;
* answers take their question's `title` and `tags` through `ParentId`;
* `type` is `question` or `answer`; `tags` is `|`-joined; `creation_date` and
  `score` are copied from the post;
* a client is one user of one site: client id `<site>/<OwnerUserId>`.

Split (documented in docs/data.md): per client, posts are ordered by
`(CreationDate, Id)`; the newest `max(1, round(0.1 n))` posts go to `test`, the
`max(1, round(0.1 n))` before them to `heldout` (none when n < 3), the rest to
`train`, so no post
straddles splits and every kept client has train and test data. A client is
kept when it has at least `min_examples` sentences and at least 2 posts; a
setting that keeps no client is refused before any output is written.

Provenance: `conversion.json` beside the database records what it was made
from (each site's name and the sha256 of its Posts.xml, `min_examples`, the
converter's version) and what it holds; `ensure_converted` reuses a folder only
when that record matches the request, so changed settings are never silently
served an old conversion.

Word counts (TFF's `stackoverflow.word_count` format, `word count` per line,
most frequent first) are computed from the train split, because TFF's own counts
cannot be fetched offline.

Parsing streams each file through an XML pull parser in 1 MiB chunks, one
`<row/>` at a time whatever the line layout (real dumps are tens of GB);
memory is bounded by the largest row, and examples are staged in the output
SQLite file. Question titles and tags (for answers) and the word counts go to
a scratch SQLite file beside it, so memory stays flat whatever the dump's size
(measured by `bazel run //benchmarks:benchmark -- --converter`).
Rows missing a required attribute (or with a non-integer one) are counted as
malformed and reported; a file that is not well-formed XML, not UTF-8, not a
Posts.xml dump or cut before `</posts>` raises `MalformedDumpError` naming the
file and line. The database and word counts are written under temporary names
and replace the old ones together, under the output folder's lock
(`run_lock`).
"""

import codecs
import collections
import dataclasses
import html.parser
import json
import os
import re
import sqlite3
import xml.etree.ElementTree as ET
from typing import Iterator, Optional, Sequence

import tensorflow as tf

from partial_personalization.state import integrity
from partial_personalization.state import run_lock
from tasks.stackoverflow import tokenizer

DATABASE_FILENAME = 'stackoverflow.sqlite'
WORD_COUNT_FILENAME = 'stackoverflow.word_count'
RECORD_FILENAME = 'conversion.json'
# Raised when the same dumps and settings would give other files (tokenizer,
# split or schema changes), so an older conversion is not taken for a new one.
CONVERTER_VERSION = 2
SPLITS = ('train', 'heldout', 'test')
# Distinct words counted in memory before they are added to the scratch file.
_WORD_COUNT_BATCH = 1_000_000
QUESTION, ANSWER = '1', '2'

_TAGS_RE = re.compile(r'<([^<>]+)>')
# Block-level tags whose boundaries separate sentences or words.
_BREAK_TAGS = frozenset(
    'p br div li ul ol blockquote h1 h2 h3 h4 h5 h6 hr tr td th table'.split()
)


class MalformedDumpError(ValueError):
  """A file is not a readable Stack Exchange `Posts.xml` dump."""


class ConversionMismatchError(ValueError):
  """A folder holds a conversion of other dumps or settings than asked for,
  or one whose settings are unknown (an older version's, or unfinished)."""


@dataclasses.dataclass
class Post:
  """One `<row/>` of `Posts.xml` (questions and answers only)."""

  post_id: int
  post_type: str  # QUESTION or ANSWER.
  parent_id: Optional[int]
  creation_date: str
  score: int
  body: str
  owner: Optional[str]
  title: str
  tags: str  # '|'-joined.


@dataclasses.dataclass
class ConversionStats:
  """Counts of what the conversion kept and dropped, for the summary."""

  sites: int = 0
  rows: int = 0
  questions: int = 0
  answers: int = 0
  other_post_types: int = 0
  malformed_rows: int = 0
  missing_owner: int = 0
  orphan_answers: int = 0  # Kept, with empty title and tags.
  empty_body: int = 0
  clients_seen: int = 0
  clients_kept: int = 0
  examples: dict[str, int] = dataclasses.field(default_factory=dict)
  clients: dict[str, int] = dataclasses.field(default_factory=dict)
  vocab_size: int = 0
  vocab_coverage: dict[str, float] = dataclasses.field(default_factory=dict)
  coverage_vocab_size: int = 0

  def summary(self) -> str:
    lines = [
        f'sites: {self.sites}   rows: {self.rows}   questions: '
        f'{self.questions}   answers: {self.answers}',
        f'dropped rows: malformed {self.malformed_rows}, missing owner '
        f'{self.missing_owner}, other post types {self.other_post_types}, '
        f'empty body {self.empty_body}; answers without their question '
        f'(kept, no title/tags): {self.orphan_answers}',
        f'clients: {self.clients_kept} kept of {self.clients_seen}',
    ]
    for split in SPLITS:
      lines.append(
          f'  {split:8s} clients {self.clients.get(split, 0):6d}   examples '
          f'{self.examples.get(split, 0):8d}'
      )
    lines.append(f'train vocabulary: {self.vocab_size} distinct tokens')
    for split, cov in self.vocab_coverage.items():
      lines.append(
          f'  {split:8s} token coverage by top-{self.coverage_vocab_size} '
          f'train words: {cov:.1%}'
      )
    return '\n'.join(lines)


class _TextExtractor(html.parser.HTMLParser):
  """Collects the text of an HTML fragment, dropping `<pre>` code blocks."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.parts = []
    self._pre_depth = 0

  def handle_starttag(self, tag, attrs):
    if tag == 'pre':
      self._pre_depth += 1
    if tag in _BREAK_TAGS or tag == 'pre':
      self.parts.append('\n')

  def handle_endtag(self, tag):
    if tag == 'pre' and self._pre_depth:
      self._pre_depth -= 1
    if tag in _BREAK_TAGS or tag == 'pre':
      self.parts.append('\n')

  def handle_data(self, data):
    if not self._pre_depth:
      self.parts.append(data)


def html_to_sentences(body: str) -> list[str]:
  """Returns the tokenized sentences of an HTML post body.

  Args:
    body: The post's `Body` attribute, already XML-unescaped (HTML markup with
      HTML entities).

  Returns:
    Sentences, each tokens joined by single spaces, by the rules of
    `tokenizer` (Unicode words, URLs as `<url>`, ...); empty sentences are
    dropped.
  """
  extractor = _TextExtractor()
  extractor.feed(body)
  extractor.close()
  return tokenizer.sentences(''.join(extractor.parts))


def _parse_tags(raw: str) -> str:
  # Dumps use `<a><b>` (older) or `|a|b|` (newer).
  tags = _TAGS_RE.findall(raw) if '<' in raw else raw.strip('|').split('|')
  return '|'.join(t for t in tags if t)


def iter_posts(path: str, stats: ConversionStats) -> Iterator[Post]:
  """Streams the questions and answers of one `Posts.xml`, row by row.

  Args:
    path: Path of a `Posts.xml` file (UTF-8, optional BOM, any line layout).
    stats: Updated in place with row counts and drops.

  Yields:
    `Post`s in file order.

  Raises:
    FileNotFoundError: `path` does not exist.
    MalformedDumpError: the file is not UTF-8, not well-formed XML, has another
      root than `<posts>`, or ends before `</posts>` (truncated); the message
      names the file and line.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{path}: no such file. Each site folder must hold the Posts.xml of a '
        'Stack Exchange data dump.'
    )
  decoder = codecs.getincrementaldecoder('utf-8-sig')()
  parser = ET.XMLPullParser(events=('start', 'end'))
  root, depth, closed, offset = None, 0, False, 0

  def xml_error(e: ET.ParseError, final: bool = False) -> MalformedDumpError:
    line, column = e.position
    if final:  # The text parsed so far was well-formed: it stops too early.
      return MalformedDumpError(
          f'{path}:{line}: the file ends before </posts> ({e}): it is truncated. '
          'Re-extract or re-download the dump.')
    return MalformedDumpError(
        f'{path}:{line}:{column}: not well-formed XML ({e}). Re-extract the dump; a '
        'Stack Exchange Posts.xml is one <posts> element of <row/> elements.')

  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      try:
        text = decoder.decode(chunk)
      except UnicodeDecodeError as e:
        raise MalformedDumpError(
            f'{path}: not UTF-8 text near byte {offset + e.start} ({e.reason}). Data '
            'dumps are UTF-8; re-extract the file.') from e
      offset += len(chunk)
      try:
        parser.feed(text)
        events = list(parser.read_events())
      except ET.ParseError as e:
        raise xml_error(e) from e
      for event, element in events:
        if event == 'start':
          depth += 1
          if root is None:
            if element.tag != 'posts':
              raise MalformedDumpError(
                  f'{path}: the root element is <{element.tag}>, not <posts>: this is not '
                  'a Stack Exchange Posts.xml. Point the converter at the site folders of '
                  'an unpacked data dump.')
            root = element
          continue
        depth -= 1
        if depth == 0:
          closed = True
        elif depth == 1 and element.tag == 'row':
          stats.rows += 1
          post = _post_from_attributes(element.attrib)
          root.clear()  # Bounded memory: drop the rows already read.
          if post is None:
            stats.malformed_rows += 1
          elif post.post_type not in (QUESTION, ANSWER):
            stats.other_post_types += 1
          else:
            yield post
    try:
      parser.close()
    except ET.ParseError as e:
      raise xml_error(e, final=True) from e
  if root is None or not closed:
    raise MalformedDumpError(
        f'{path}: no complete <posts> element; this is not a (whole) Stack Exchange '
        'Posts.xml.')


def _post_from_attributes(a) -> Optional[Post]:
  """A `<row>`'s attributes as a `Post`; None when a required one is missing
  or not an integer."""
  try:
    post_id = int(a['Id'])
    parent = a.get('ParentId')
    return Post(
        post_id=post_id,
        post_type=a['PostTypeId'],
        parent_id=int(parent) if parent else None,
        creation_date=a['CreationDate'],
        score=int(a.get('Score', '0')),
        body=a.get('Body', ''),
        owner=a.get('OwnerUserId') or None,
        title=a.get('Title', ''),
        tags=_parse_tags(a.get('Tags', '')),
    )
  except (KeyError, ValueError):
    return None


def _example_proto(post: Post, tokens: str, title: str, tags: str) -> bytes:
  def b(s):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[s.encode()]))

  features = {
      'tokens': b(tokens),
      'title': b(title),
      'tags': b(tags),
      'type': b('question' if post.post_type == QUESTION else 'answer'),
      'creation_date': b(post.creation_date),
      'score': tf.train.Feature(int64_list=tf.train.Int64List(value=[post.score])),
  }
  return tf.train.Example(
      features=tf.train.Features(feature=features)
  ).SerializeToString()


def find_site_dirs(dump_dirs: Sequence[str]) -> list[tuple[str, str]]:
  """Resolves arguments to `(site_name, Posts.xml path)` pairs.

  Each argument is either a site folder holding `Posts.xml` or a folder of such
  site folders (as `../shared/data/stackexchange/`).

  Raises:
    FileNotFoundError: an argument does not exist or holds no Posts.xml, or a
      folder of sites has a subfolder without one.
    ValueError: a site name contains characters unsafe in a client id, or the
      same site name is given twice.
  """
  sites = []
  for d in dump_dirs:
    if not os.path.isdir(d):
      raise FileNotFoundError(f'{d}: not a directory of Stack Exchange dumps.')
    if os.path.isfile(os.path.join(d, 'Posts.xml')):
      sites.append((os.path.basename(os.path.normpath(d)), os.path.join(d, 'Posts.xml')))
      continue
    folders = sorted(name for name in os.listdir(d) if os.path.isdir(os.path.join(d, name)))
    found = [(name, os.path.join(d, name, 'Posts.xml')) for name in folders
             if os.path.isfile(os.path.join(d, name, 'Posts.xml'))]
    if not found:
      raise FileNotFoundError(
          f'{d}: holds neither Posts.xml nor site folders with a Posts.xml.'
      )
    missing = sorted(set(folders) - {name for name, _ in found})
    if missing:
      raise FileNotFoundError(
          f'{d}: site folders without a Posts.xml: {missing}. Extract their dumps, or '
          'pass the other site folders one by one.')
    sites.extend(found)
  names = collections.Counter(name for name, _ in sites)
  twice = sorted(name for name, n in names.items() if n > 1)
  if twice:
    raise ValueError(f'sites given more than once: {twice} (client ids would collide); '
                     'pass each site folder once.')
  for name, _ in sites:
    # TFF's SqlClientData splices client ids into SQL text.
    if not re.fullmatch(r'[A-Za-z0-9._-]+', name):
      raise ValueError(f'site folder name {name!r} must match [A-Za-z0-9._-]+')
  return sites


def convert(
    dump_dirs: Sequence[str],
    output_dir: str,
    *,
    min_examples: int = 20,
    coverage_vocab_size: int = 10000,
    overwrite: bool = False,
) -> ConversionStats:
  """Writes `stackoverflow.sqlite` and `stackoverflow.word_count` to `output_dir`.

  Args:
    dump_dirs: Site folders or folders of site folders (see `find_site_dirs`).
    output_dir: Created if missing; becomes the `cache_dir` of TFF's loader.
    min_examples: Minimum number of sentences (all splits) for a client to be
      kept. TFF's StackOverflow used 100 on the full dump.
    coverage_vocab_size: Vocabulary size used for the coverage figures.
    overwrite: Replace an existing database; otherwise it is an error.

  Returns:
    `ConversionStats`; `summary()` gives the printed report.

  Raises:
    FileExistsError: the database exists and `overwrite` is False.
    FileNotFoundError, MalformedDumpError, ValueError: see `iter_posts` and
      `find_site_dirs`; nothing in `output_dir` is replaced then.
    run_lock.LockedError: another process is converting into `output_dir`.
  """
  db_path = os.path.join(output_dir, DATABASE_FILENAME)
  if os.path.exists(db_path) and not overwrite:
    raise FileExistsError(f'{db_path} exists; pass overwrite=True (--overwrite) to rebuild it.')
  sites = find_site_dirs(dump_dirs)
  record = conversion_record(sites, min_examples)
  # The folders this call creates (output_dir and missing parents), removed
  # again when the conversion is refused, so a refusal leaves nothing behind.
  created, folder = [], os.path.abspath(output_dir)
  while not os.path.exists(folder):
    created.append(folder)
    folder = os.path.dirname(folder)
  try:
    with run_lock.exclusive(output_dir, what='data folder'):
      stats = _convert_locked(sites, output_dir, db_path, min_examples, coverage_vocab_size,
                              record)
  except NoClientsError:
    if created:
      os.remove(os.path.join(output_dir, run_lock.LOCK_FILENAME))
      for folder in created:  # Innermost first.
        os.rmdir(folder)
    raise
  return stats


class NoClientsError(ValueError):
  """`min_examples` keeps no client of the dumps."""


def _convert_locked(sites, output_dir, db_path, min_examples, coverage_vocab_size, record):
  tmp_path = db_path + '.partial'
  if os.path.exists(tmp_path):
    os.remove(tmp_path)
  stats = ConversionStats(sites=len(sites), coverage_vocab_size=coverage_vocab_size)
  conn = sqlite3.connect(tmp_path)
  # Scratch tables (question titles, word counts) apart from the database, so
  # they neither change its bytes nor stay in it.
  aux_path = db_path + '.scratch'
  if os.path.exists(aux_path):
    os.remove(aux_path)
  aux = sqlite3.connect(aux_path)
  aux.execute('PRAGMA journal_mode=OFF')
  aux.execute('PRAGMA synchronous=OFF')
  try:
    _stage_examples(conn, aux, sites, stats)
    largest = conn.execute('SELECT COUNT(*) AS n FROM staged GROUP BY client_id '
                           'ORDER BY n DESC LIMIT 1').fetchone()
    _assign_splits(conn, min_examples, stats)
    if not stats.clients_kept:
      raise NoClientsError(
          f'`min_examples`={min_examples} keeps no client of the {len(sites)} site(s): the '
          f'largest client has {largest[0] if largest else 0} sentences (a client also '
          'needs 2 posts). Lower `min_examples`; nothing was written.')
    words = _write_word_counts(conn, aux, output_dir, stats, top=coverage_vocab_size)
    _compute_coverage(conn, set(words), stats)
    _finalize_schema(conn)
    conn.commit()
    conn.execute('VACUUM')
  except BaseException:
    conn.close()
    os.remove(tmp_path)
    raise
  finally:
    aux.close()
    os.remove(aux_path)
  conn.close()
  record['contents'] = {'clients': stats.clients_kept, 'examples': stats.examples,
                        'vocabulary': stats.vocab_size}
  record_path = os.path.join(output_dir, RECORD_FILENAME)
  with open(record_path + '.partial', 'w', encoding='utf-8') as f:
    json.dump(record, f, indent=2, sort_keys=True)
  # The database marks a finished conversion, so it goes first and comes
  # back last: a crash in between leaves no database (converted again), never
  # a database beside another conversion's word counts or record.
  if os.path.exists(db_path):
    os.remove(db_path)
  word_counts = os.path.join(output_dir, WORD_COUNT_FILENAME)
  os.replace(word_counts + '.partial', word_counts)
  os.replace(record_path + '.partial', record_path)
  os.replace(tmp_path, db_path)
  return stats


def conversion_record(sites: Sequence[tuple[str, str]], min_examples: int) -> dict:
  """What a conversion is made from: the converter's version, `min_examples`
  and each site's name with the sha256 of its Posts.xml (the content, so the
  same dumps match wherever they lie)."""
  return {'converter_version': CONVERTER_VERSION, 'min_examples': int(min_examples),
          'sites': {name: integrity.file_sha256(path) for name, path in sites}}


def read_record(output_dir: str) -> Optional[dict]:
  """The folder's `conversion.json`, or None when it has none."""
  path = os.path.join(output_dir, RECORD_FILENAME)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except ValueError as e:
    raise ConversionMismatchError(
        f'{path} is unreadable ({e}); convert again into a new folder (or delete '
        f'{output_dir}).') from e


def _describe(record: dict) -> str:
  sites = record.get('sites', {})
  return (f"`min_examples`={record.get('min_examples')} from {len(sites)} site(s) "
          f"(converter version {record.get('converter_version')})")


def ensure_converted(dump_dirs: Sequence[str], output_dir: str, *, min_examples: int,
                     log=print) -> Optional[ConversionStats]:
  """Converts `dump_dirs` into `output_dir`, or reuses the conversion there
  when its record matches (same sites and content, `min_examples`, version).

  Returns:
    The new conversion's stats, or None when the existing one was reused.

  Raises:
    ConversionMismatchError: `output_dir` holds another conversion (the message
      names both settings), or one without a record (an older version's).
    NoClientsError, and what `convert` raises.
  """
  sites = find_site_dirs(dump_dirs)
  wanted = conversion_record(sites, min_examples)
  if not os.path.exists(os.path.join(output_dir, DATABASE_FILENAME)):
    log(f'== converting {len(sites)} Stack Exchange site(s) into {output_dir}')
    stats = convert(dump_dirs, output_dir, min_examples=min_examples)
    log(stats.summary())
    return stats
  have = read_record(output_dir)
  if have is None:
    raise ConversionMismatchError(
        f'{output_dir} holds a conversion without {RECORD_FILENAME}: an older version made '
        'it, so its dumps and settings are unknown. Delete that folder to convert again, '
        'or choose another `output_dir`.')
  mismatch = [k for k in ('converter_version', 'min_examples') if have.get(k) != wanted[k]]
  have_sites, want_sites = have.get('sites', {}), wanted['sites']
  details = []
  if sorted(have_sites) != sorted(want_sites):
    details.append(f'sites only there: {sorted(set(have_sites) - set(want_sites))}, only '
                   f'asked for: {sorted(set(want_sites) - set(have_sites))}')
  changed = sorted(s for s in set(have_sites) & set(want_sites)
                   if have_sites[s] != want_sites[s])
  if changed:
    details.append(f'dumps changed since: {changed}')
  if mismatch or details:
    raise ConversionMismatchError(
        f'{output_dir} holds a conversion of {_describe(have)}; this job asks for '
        f'{_describe(wanted)}{" (" + "; ".join(details) + ")" if details else ""}. Each '
        'conversion needs its own folder: choose another `output_dir`, or delete this '
        'one to convert again.')
  return None


def _stage_examples(conn, aux, sites, stats):
  """Stages every sentence in `conn`; question titles and tags (which answers
  need) go to the scratch database `aux`, not to memory, so memory does not
  grow with the dump (issue 26: the full StackOverflow dump has ~23M questions)."""
  conn.execute(
      'CREATE TABLE staged (client_id TEXT, site TEXT, creation_date TEXT, '
      'post_id INTEGER, serialized_example_proto BLOB, tokens TEXT)'
  )
  for site, path in sites:
    aux.execute('DROP TABLE IF EXISTS questions')
    aux.execute('CREATE TABLE questions (post_id INTEGER PRIMARY KEY, title TEXT, tags TEXT)')
    rows = []
    for post in iter_posts(path, stats):
      if post.post_type == QUESTION:
        stats.questions += 1
        # OR REPLACE: a repeated id keeps the last one, as a dict would.
        aux.execute('INSERT OR REPLACE INTO questions VALUES (?, ?, ?)',
                    (post.post_id, post.title, post.tags))
        title, tags = post.title, post.tags
      else:
        stats.answers += 1
        question = aux.execute('SELECT title, tags FROM questions WHERE post_id = ?',
                               (post.parent_id,)).fetchone()
        if question is not None:
          title, tags = question
        else:
          stats.orphan_answers += 1
          title, tags = '', ''
      if post.owner is None:
        stats.missing_owner += 1
        continue
      sentences = html_to_sentences(post.body)
      if not sentences:
        stats.empty_body += 1
        continue
      client_id = f'{site}/{post.owner}'
      for s in sentences:
        rows.append((client_id, site, post.creation_date, post.post_id,
                     _example_proto(post, s, title, tags), s))
      if len(rows) >= 10000:
        conn.executemany('INSERT INTO staged VALUES (?,?,?,?,?,?)', rows)
        rows.clear()
    conn.executemany('INSERT INTO staged VALUES (?,?,?,?,?,?)', rows)
  stats.clients_seen = conn.execute('SELECT COUNT(DISTINCT client_id) FROM staged').fetchone()[0]
  conn.commit()


def _assign_splits(conn, min_examples, stats):
  """Per-client date-based split by post (see the module docstring)."""
  conn.executescript(
      f"""
      CREATE TABLE client_posts AS
        SELECT client_id, post_id, creation_date,
          ROW_NUMBER() OVER (PARTITION BY client_id
                             ORDER BY creation_date DESC, post_id DESC) AS age,
          COUNT(*) OVER (PARTITION BY client_id) AS n_posts
        FROM (SELECT client_id, post_id, MIN(creation_date) AS creation_date,
                     COUNT(*) AS n_sentences
              FROM staged GROUP BY client_id, post_id);
      CREATE TABLE kept AS
        SELECT client_id FROM staged GROUP BY client_id
        HAVING COUNT(*) >= {int(min_examples)}
           AND COUNT(DISTINCT post_id) >= 2;
      CREATE TABLE post_split AS
        SELECT client_id, post_id,
          CASE
            WHEN age <= MAX(1, CAST(ROUND(0.1 * n_posts) AS INTEGER)) THEN 'test'
            WHEN n_posts >= 3 AND age <= MAX(1, CAST(ROUND(0.1 * n_posts) AS INTEGER))
                        + MAX(1, CAST(ROUND(0.1 * n_posts) AS INTEGER)) THEN 'heldout'
            ELSE 'train'
          END AS split_name
        FROM client_posts WHERE client_id IN (SELECT client_id FROM kept);
      CREATE TABLE examples (split_name TEXT NOT NULL, client_id TEXT NOT NULL,
                             serialized_example_proto BLOB NOT NULL,
                             tokens TEXT NOT NULL);
      INSERT INTO examples
        SELECT p.split_name, s.client_id, s.serialized_example_proto, s.tokens
        FROM staged s JOIN post_split p USING (client_id, post_id)
        ORDER BY s.client_id, s.creation_date, s.post_id, s.rowid;
      CREATE TABLE client_metadata (client_id TEXT NOT NULL,
                                    split_name TEXT NOT NULL,
                                    num_examples INTEGER NOT NULL);
      INSERT INTO client_metadata
        SELECT client_id, split_name, COUNT(*) FROM examples
        GROUP BY client_id, split_name;
      -- Extra metadata (TFF's loader ignores it): the site is a natural group.
      CREATE TABLE client_groups AS
        SELECT DISTINCT client_id, site AS group_id FROM staged
        WHERE client_id IN (SELECT client_id FROM kept);
      DROP TABLE client_posts; DROP TABLE kept; DROP TABLE post_split;
      """
  )
  stats.clients_kept = conn.execute(
      'SELECT COUNT(*) FROM client_groups'
  ).fetchone()[0]
  for split, n_clients, n_examples in conn.execute(
      'SELECT split_name, COUNT(*), SUM(num_examples) FROM client_metadata '
      'GROUP BY split_name'
  ):
    stats.clients[split] = n_clients
    stats.examples[split] = n_examples
  conn.commit()


def _write_word_counts(conn, aux, output_dir, stats, top: int) -> list[str]:
  """Writes the train word counts; returns the `top` most frequent words.

  Counts are summed in batches into the scratch database `aux`, so memory is
  bounded whatever the vocabulary (code identifiers make it large)."""
  aux.execute('CREATE TABLE word_counts (word TEXT PRIMARY KEY, n INTEGER NOT NULL)')

  def flush(counts):
    aux.executemany('INSERT INTO word_counts VALUES (?, ?) '
                    'ON CONFLICT (word) DO UPDATE SET n = n + excluded.n', counts.items())
    counts.clear()

  counts = collections.Counter()
  for (tokens,) in conn.execute(
      "SELECT tokens FROM examples WHERE split_name = 'train'"
  ):
    counts.update(tokens.split(' '))
    if len(counts) >= _WORD_COUNT_BATCH:
      flush(counts)
  flush(counts)
  stats.vocab_size = aux.execute('SELECT COUNT(*) FROM word_counts').fetchone()[0]
  # Ties broken alphabetically so the vocabulary is deterministic (SQLite
  # compares UTF-8 bytes: the code-point order of Python's str).
  words = []
  path = os.path.join(output_dir, WORD_COUNT_FILENAME)
  with open(path + '.partial', 'w', encoding='utf-8') as f:  # Renamed by `convert`.
    for word, count in aux.execute('SELECT word, n FROM word_counts ORDER BY n DESC, word'):
      f.write(f'{word} {count}\n')
      if len(words) < top:
        words.append(word)
  return words


def _compute_coverage(conn, vocab: set, stats):
  for split in SPLITS:
    total = covered = 0
    for (tokens,) in conn.execute(
        'SELECT tokens FROM examples WHERE split_name = ?', (split,)
    ):
      words = tokens.split(' ')
      total += len(words)
      covered += sum(w in vocab for w in words)
    if total:
      stats.vocab_coverage[split] = covered / total


def _finalize_schema(conn):
  # The staging table and the helper `tokens` column are not TFF's schema.
  conn.executescript(
      'DROP TABLE staged; '
      'CREATE TABLE examples_tff AS SELECT split_name, client_id, '
      'serialized_example_proto FROM examples; DROP TABLE examples; '
      'ALTER TABLE examples_tff RENAME TO examples; '
      'CREATE INDEX examples_client ON examples (client_id, split_name);'
  )


def load_vocab(cache_dir: str, vocab_size: int) -> list[str]:
  """Reads the `vocab_size` most frequent train words written by `convert`.

  Raises:
    FileNotFoundError: with the command that creates the file.
  """
  path = os.path.join(cache_dir, WORD_COUNT_FILENAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{path} not found. Create it with: bazel run //runners:convert_stackexchange '
        f'-- --dump_dirs=../shared/data/stackexchange --output_dir={cache_dir}'
    )
  vocab = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      if len(vocab) >= vocab_size:
        break
      word = line.rsplit(' ', 1)[0]
      vocab.append(word)
  return vocab


def check_loadable(cache_dir: str) -> None:
  """Checks that `cache_dir` holds a finished conversion with clients, before
  TFF's loader reads it (its error on an empty database is a bare StopIteration).

  Raises:
    FileNotFoundError: no database (names the command that creates it).
    ValueError: the database holds no client (an empty conversion, which
      older versions wrote for a `min_examples` that kept no client), or is
      not a conversion's database.
  """
  path = os.path.join(cache_dir, DATABASE_FILENAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{path} not found. Create it with: bazel run //runners:convert_stackexchange '
        f'-- --dump_dirs=../shared/data/stackexchange --output_dir={cache_dir}')
  try:
    with sqlite3.connect(f'file:{path}?mode=ro', uri=True) as conn:
      clients = conn.execute('SELECT COUNT(DISTINCT client_id) FROM client_metadata '
                             "WHERE split_name = 'train'").fetchone()[0]
  except sqlite3.DatabaseError as e:
    raise ValueError(f'{path} is not a converted dataset ({e}); convert the dumps again '
                     'into a new folder.') from e
  if not clients:
    raise ValueError(
        f'{path} holds no client: an empty conversion (an older version wrote one when '
        '`min_examples` kept no client). Delete it and convert again with a smaller '
        '--min_examples.')


def load_client_groups(cache_dir: str) -> dict[str, str]:
  """{client id: Stack Exchange site} from the `client_groups` table `convert` writes.

  Raises:
    ValueError: the database predates the table (names the command that
      rewrites it).
  """
  path = os.path.join(cache_dir, DATABASE_FILENAME)
  with sqlite3.connect(f'file:{path}?mode=ro', uri=True) as conn:
    try:
      rows = conn.execute('SELECT client_id, group_id FROM client_groups').fetchall()
    except sqlite3.OperationalError as e:
      raise ValueError(
          f'{path} has no client_groups table ({e}); convert the dumps again: '
          'bazel run //runners:convert_stackexchange -- --dump_dirs=... '
          f'--output_dir={cache_dir}') from e
  return dict(rows)
