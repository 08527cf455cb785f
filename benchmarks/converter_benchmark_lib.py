"""The Stack Exchange converter and its caches at dump scale (`benchmark --converter`).

Builds synthetic `Posts.xml` files of growing size from the real rows of the
dumps (each copy with new post and user ids, so its clients are new clients),
then measures in a fresh process each: the conversion (MB/s, rows/s, peak
memory), the token-id cache built from its result (`token_cache`), and the
sha256 of the converted data (what the stored model's manifest checks). Peak
memory that stays flat across sizes is what lets the converter take the full
StackOverflow dump (~100 GB of Posts.xml).

Dumps and conversions are kept in `<out>/converter/` (a rerun reuses them).
"""

import dataclasses
import os
import re
import resource
import shutil
import time
from typing import Sequence

import pandas as pd

from benchmarks import benchmark_lib
from tasks.stackoverflow import convert_lib

# Ids that tie rows together (answers to questions, posts to users); shifted
# per copy so each copy is a new population of posts and clients.
_ID_RE = re.compile(r'\b(Id|ParentId|OwnerUserId)="(\d+)"')
_ID_STRIDE = 10**8


@dataclasses.dataclass(frozen=True)
class ConverterSettings:
  out_dir: str
  dump_dirs: tuple[str, ...]
  sizes_mb: tuple[int, ...] = (32, 128, 512)
  min_examples: int = 500
  vocab_size: int = 10_000
  sequence_length: int = 20


def build_dump(dump_dirs: Sequence[str], folder: str, target_bytes: int) -> dict:
  """Writes `<folder>/synthetic/Posts.xml` of at least `target_bytes` from
  copies of the real rows (one row per line, as in real dumps)."""
  path = os.path.join(folder, 'synthetic', 'Posts.xml')
  done = os.path.join(folder, 'done')
  if os.path.exists(done):
    with open(done) as f:
      copies = int(f.read())
    return dict(path=path, copies=copies, bytes=os.path.getsize(path))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  sites = convert_lib.find_site_dirs(dump_dirs)
  written, copies = 0, 0
  with open(path, 'w', encoding='utf-8') as out:
    out.write('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n')
    while written < target_bytes:
      for k, (_, site_path) in enumerate(sites):
        offset = (copies * len(sites) + k) * _ID_STRIDE
        shift = lambda m, offset=offset: f'{m.group(1)}="{int(m.group(2)) + offset}"'
        with open(site_path, encoding='utf-8-sig') as f:
          for line in f:
            if line.lstrip().startswith('<row '):
              line = _ID_RE.sub(shift, line)
              out.write(line)
              written += len(line.encode('utf-8'))
      copies += 1
    out.write('</posts>\n')
  with open(done, 'w') as f:
    f.write(str(copies))
  return dict(path=path, copies=copies, bytes=os.path.getsize(path))


def _peak_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _convert(dump_folder: str, data_dir: str, min_examples: int, queue):
  """Child: the conversion alone (no TensorFlow imported: its own peak memory)."""
  base = _peak_mb()
  if os.path.isdir(data_dir):
    shutil.rmtree(data_dir)
  start = time.perf_counter()
  stats = convert_lib.convert([dump_folder], data_dir, min_examples=min_examples)
  queue.put(dict(convert_s=time.perf_counter() - start, rows=stats.rows,
                 clients_seen=stats.clients_seen, clients_kept=stats.clients_kept,
                 sentences=sum(stats.examples.values()), vocabulary=stats.vocab_size,
                 convert_peak_mb=_peak_mb(), python_base_mb=base))


def _caches(data_dir: str, vocab_size: int, sequence_length: int, queue):
  """Child: the data hash, then the token-id cache built from scratch."""
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  from partial_personalization.state import integrity  # pylint: disable=g-import-not-at-top
  from tasks.stackoverflow import token_cache  # pylint: disable=g-import-not-at-top
  files = [os.path.join(data_dir, n) for n in (convert_lib.DATABASE_FILENAME,
                                               convert_lib.WORD_COUNT_FILENAME)]
  start = time.perf_counter()
  integrity.files_sha256(files)
  hash_s = time.perf_counter() - start
  cache = os.path.join(data_dir, token_cache.CACHE_FILENAME)
  if os.path.exists(cache):
    os.remove(cache)
  base = _peak_mb()
  start = time.perf_counter()
  vocab = convert_lib.load_vocab(data_dir, vocab_size)
  train, heldout, test = tff.simulation.datasets.stackoverflow.load_data(cache_dir=data_dir)
  token_cache.load_or_build(data_dir, {'train': train, 'heldout': heldout, 'test': test},
                            vocab, sequence_length)
  queue.put(dict(hash_s=hash_s, token_cache_s=time.perf_counter() - start,
                 token_cache_mb=os.path.getsize(cache) / 2**20,
                 token_cache_peak_mb=_peak_mb(), tf_base_mb=base))


def measure(settings: ConverterSettings, size_mb: int) -> dict:
  folder = os.path.join(settings.out_dir, 'converter', f'{size_mb}mb')
  dump = build_dump(settings.dump_dirs, os.path.join(folder, 'dump'), size_mb * 2**20)
  data_dir = os.path.join(folder, 'data')
  row = dict(dump_mb=dump['bytes'] / 2**20, copies=dump['copies'])
  row.update(benchmark_lib.run_in_child(_convert, os.path.join(folder, 'dump'), data_dir,
                                        settings.min_examples, what='conversion'))
  row['database_mb'] = os.path.getsize(os.path.join(data_dir, convert_lib.DATABASE_FILENAME)) / 2**20
  row['mb_per_s'] = row['dump_mb'] / row['convert_s']
  row['rows_per_s'] = row['rows'] / row['convert_s']
  row.update(benchmark_lib.run_in_child(_caches, data_dir, settings.vocab_size,
                                        settings.sequence_length, what='data hash and token cache'))
  return row


def run(settings: ConverterSettings) -> pd.DataFrame:
  rows = []
  for size in settings.sizes_mb:
    print(f'== {size} MB of Posts.xml: build, convert, hash, token-id cache', flush=True)
    rows.append(measure(settings, size))
    r = rows[-1]
    print(f"   {r['dump_mb']:,.0f} MB converted in {r['convert_s']:,.0f} s "
          f"({r['mb_per_s']:.2f} MB/s), peak {r['convert_peak_mb']:,.0f} MB; token-id cache "
          f"{r['token_cache_s']:,.0f} s, peak {r['token_cache_peak_mb']:,.0f} MB", flush=True)
  return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame) -> str:
  lines = ['| Posts.xml (MB) | rows | convert (s) | MB/s | rows/s | converter peak memory (MB) '
           '| clients kept / seen | sentences | data sha256 (s) | token-id cache: build (s) / '
           'file (MB) / peak memory (MB) |', '|' + '---|' * 10]
  for _, r in table.iterrows():
    lines.append(
        f'| {r.dump_mb:,.0f} | {int(r.rows):,} | {r.convert_s:,.0f} | {r.mb_per_s:.2f} | '
        f'{r.rows_per_s:,.0f} | {r.convert_peak_mb:,.0f} | {int(r.clients_kept):,} / '
        f'{int(r.clients_seen):,} | {int(r.sentences):,} | {r.hash_s:.2f} | {r.token_cache_s:,.0f} / '
        f'{r.token_cache_mb:,.0f} / {r.token_cache_peak_mb:,.0f} |')
  return '\n'.join(lines)
