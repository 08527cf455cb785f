"""The client-state store at population scale (`benchmark --store`).

Fills a `ClientStateStore` with personal weights of the real shapes (the
StackOverflow transformer's personal part, random values) for each population,
then measures, each in a fresh process and from a cold page cache where the
OS allows it (root on Linux): opening it (with its bounded integrity
check), one round's store work for `clients_per_round` clients (read, write,
commit), the rounds' peak memory, resuming after a `kill -9` in the middle of a
round (open and rollback), the full on-demand check (`verify`), and what the
earlier design cost per round (a whole-file `quick_check` at open, a prune
over the whole table at commit), so the two can be compared on one machine.

Stores are kept in `<out>/store/` between runs (a rerun reuses a full store and
resumes a partial fill); each is ~134 KB per client for `tiny`'s last block.
"""

import dataclasses
import os
import signal
import statistics
import time
from typing import Sequence

import numpy as np
import pandas as pd

from partial_personalization.programs import progress as progress_lib
from benchmarks import benchmark_lib


@dataclasses.dataclass(frozen=True)
class StoreSettings:
  """What to measure. `populations`: clients in each store (sizes)."""
  out_dir: str
  populations: tuple[int, ...] = (10_000, 30_000, 100_000)
  clients_per_round: int = 50
  rounds: int = 10         # measured rounds per population (medians reported)
  model_size: str = 'tiny'
  personalization: str = 'last_block'
  vocab_size: int = 10_004  # StackOverflow's 10,000 words + 4 special tokens
  fill_chunk: int = 1_000   # clients written per fill round


def personal_shapes(model_size: str, personalization: str, vocab_size: int) -> list:
  """[(shape, dtype)] of the personal part v of the StackOverflow transformer."""
  from tasks.stackoverflow import model as model_lib  # pylint: disable=g-import-not-at-top
  from partial_personalization.models import partition as partition_lib  # pylint: disable=g-import-not-at-top
  overrides = model_lib.PARTITIONS.model_overrides(personalization)
  config = model_lib.TransformerConfig(vocab_size=vocab_size,
                                       **model_lib.MODEL_SIZES[model_size], **overrides)
  keras_model = model_lib.create_transformer(config)
  part = partition_lib.VariablePartition.from_model(
      keras_model, model_lib.PARTITIONS.get(personalization))
  names = part.personal_names
  return ([(part.shapes[n], 'float32') for n in names.trainable],
          [(part.shapes[n], 'float32') for n in names.non_trainable])


def _weights(shapes, rng):
  from partial_personalization.state import client_state  # pylint: disable=g-import-not-at-top
  trainable, non_trainable = shapes
  make = lambda specs: [rng.standard_normal(s).astype(d) for s, d in specs]
  return client_state.ModelWeights(trainable=make(trainable), non_trainable=make(non_trainable))


def _client_id(i: int) -> str:
  return f'client{i:07d}'


def store_path(settings: StoreSettings, population: int) -> str:
  return os.path.join(settings.out_dir, 'store',
                      f'{settings.model_size}_{settings.personalization}_{population}.sqlite')


def fill(settings: StoreSettings, population: int, shapes) -> float:
  """Writes every client once (rounds of `fill_chunk` clients, each committed);
  resumes a partial fill. Returns seconds spent."""
  from partial_personalization.state import client_state  # pylint: disable=g-import-not-at-top
  path = store_path(settings, population)
  rng = np.random.default_rng(population)
  store = client_state.ClientStateStore(path, _weights(shapes, rng))
  chunks = -(-population // settings.fill_chunk)
  start = time.time()
  try:
    done = min(store.committed_round, chunks)  # Measured rounds come after the fill's.
    if done == chunks:
      return 0.0
    bar = progress_lib.bar(total=chunks, initial=done, unit='chunk',
                           desc=f'fill {population:,} clients')
    for chunk in range(done, chunks):
      ids = [_client_id(i) for i in range(chunk * settings.fill_chunk,
                                          min(population, (chunk + 1) * settings.fill_chunk))]
      store.write(chunk + 1, ids, [_weights(shapes, rng) for _ in ids])
      store.commit(chunk + 1)
      bar.update(1)
    bar.close()
  finally:
    store.close()
  return time.time() - start


def _reset_peak() -> None:
  """Restarts the peak resident set (VmHWM) from the current one (Linux)."""
  with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')


def _measure_rounds(settings: StoreSettings, population: int, shapes, queue):
  """Child: open, then `rounds` rounds of read / write / commit; old-design costs."""
  from partial_personalization.state import client_state  # pylint: disable=g-import-not-at-top
  path = store_path(settings, population)
  rng = np.random.default_rng(0)
  new_weights = [_weights(shapes, rng) for _ in range(settings.clients_per_round)]
  _reset_peak()  # The peak of the store's work, not of TensorFlow's import.
  rss_before = benchmark_lib.status_kb('VmRSS')
  t = time.perf_counter()
  store = client_state.ClientStateStore(path, new_weights[0])
  open_s = time.perf_counter() - t
  reads, writes, commits, old_prunes = [], [], [], []
  for _ in range(settings.rounds):
    r = store.committed_round + 1
    ids = [_client_id(i) for i in rng.choice(population, settings.clients_per_round,
                                             replace=False)]
    t = time.perf_counter()
    store.read(ids, before_round=r)
    reads.append(time.perf_counter() - t)
    t = time.perf_counter()
    store.write(r, ids, new_weights)
    writes.append(time.perf_counter() - t)
    # The earlier design's prune: one correlated subquery over the whole table
    # (timed in a transaction that is rolled back).
    conn = store._conn  # pylint: disable=protected-access
    t = time.perf_counter()
    conn.execute('BEGIN IMMEDIATE')
    conn.execute('DELETE FROM personal WHERE round < (SELECT MAX(p.round) FROM personal p '
                 'WHERE p.client_id = personal.client_id AND p.round <= ?)', (r,))
    old_prunes.append(time.perf_counter() - t)
    conn.execute('ROLLBACK')
    t = time.perf_counter()
    store.commit(r)
    commits.append(time.perf_counter() - t)
  rows = store._conn.execute('SELECT COUNT(*) FROM personal').fetchone()[0]  # pylint: disable=protected-access
  store.close()
  peak_delta_mb = (benchmark_lib.status_kb('VmHWM') - rss_before) / 1024
  med = statistics.median
  queue.put(dict(open_s=open_s, read_s=med(reads), write_s=med(writes), commit_s=med(commits),
                 round_s=med(a + b + c for a, b, c in zip(reads, writes, commits)),
                 old_prune_s=med(old_prunes), rows=rows, peak_delta_mb=peak_delta_mb))


def _killed_mid_round(settings: StoreSettings, population: int, shapes, queue):
  """Child: writes a round's v_i, then is killed (SIGKILL) before the commit."""
  from partial_personalization.state import client_state  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  weights = [_weights(shapes, rng) for _ in range(settings.clients_per_round)]
  store = client_state.ClientStateStore(store_path(settings, population), weights[0])
  r = store.committed_round + 1
  ids = [_client_id(i) for i in rng.choice(population, settings.clients_per_round, replace=False)]
  queue.put(store.committed_round)
  store.write(r, ids, weights)
  os.kill(os.getpid(), signal.SIGKILL)


def _resume(settings: StoreSettings, population: int, shapes, queue):
  """Child: what a resumed run does with the store: open, roll back."""
  from partial_personalization.state import client_state  # pylint: disable=g-import-not-at-top
  template = _weights(shapes, np.random.default_rng(2))
  t = time.perf_counter()
  store = client_state.ClientStateStore(store_path(settings, population), template)
  dropped = store.rollback()
  resume_s = time.perf_counter() - t
  committed = store.committed_round
  store.close()
  queue.put(dict(resume_s=resume_s, dropped=dropped, committed=committed))


def _verify(settings: StoreSettings, population: int, shapes, queue):
  """Child: the full on-demand check, and SQLite's whole-file quick_check alone
  (what every open cost before)."""
  from partial_personalization.state import client_state  # pylint: disable=g-import-not-at-top
  del shapes
  store = client_state.ClientStateStore.open_existing(store_path(settings, population))
  t = time.perf_counter()
  store._conn.execute('PRAGMA quick_check').fetchone()  # pylint: disable=protected-access
  quick_check_s = time.perf_counter() - t
  t = time.perf_counter()
  rows = store.verify()
  verify_s = time.perf_counter() - t
  store.close()
  queue.put(dict(full_quick_check_s=quick_check_s, verify_s=verify_s, verified_rows=rows))


def drop_page_cache() -> bool:
  """Empties the OS page cache (Linux, as root), so the next reads come from
  the disk as after a restart; False where that is not allowed (the figures
  are then of a warm cache, marked in the table)."""
  path = '/proc/sys/vm/drop_caches'
  if not os.access(path, os.W_OK):
    return False
  os.sync()
  try:
    with open(path, 'w') as f:
      f.write('3')
  except OSError:
    return False
  return True


def measure(settings: StoreSettings, population: int, shapes, verify: bool = True) -> dict:
  """One population's row: fill (or reuse), then each measurement in a fresh process."""
  fill_s = fill(settings, population, shapes)
  path = store_path(settings, population)
  row = dict(clients=population, size_gb=os.path.getsize(path) / 1e9,
             fill_s=fill_s if fill_s > 1 else float('nan'))
  # Each measurement from a cold page cache where allowed: a store of many GB
  # is not in memory when a run starts or resumes.
  row['cold'] = drop_page_cache()
  args = (settings, population, shapes)
  row.update(benchmark_lib.run_in_child(_measure_rounds, *args, what='store rounds'))
  committed = benchmark_lib.run_in_child(_killed_mid_round, *args, what='killed round',
                                         expect_killed=True)
  drop_page_cache()
  resumed = benchmark_lib.run_in_child(_resume, *args, what='resume')
  if resumed['committed'] != committed or resumed['dropped'] != settings.clients_per_round:
    raise RuntimeError(f'resume after kill -9: committed round {resumed["committed"]} '
                       f'(expected {committed}), {resumed["dropped"]} rows dropped '
                       f'(expected {settings.clients_per_round})')
  row.update(resume_s=resumed['resume_s'], resume_dropped=resumed['dropped'])
  if verify:
    drop_page_cache()
    row.update(benchmark_lib.run_in_child(_verify, *args, what='verify'))
  return row


def run(settings: StoreSettings, verify: bool = True) -> pd.DataFrame:
  shapes = personal_shapes(settings.model_size, settings.personalization, settings.vocab_size)
  per_client = sum(int(np.prod(s)) for s, _ in shapes[0] + shapes[1])
  print(f'personal part: {settings.model_size} {settings.personalization}, '
        f'{per_client:,} parameters ({per_client * 4 / 1e3:,.0f} KB) per client')
  rows = []
  for n in settings.populations:
    rows.append(measure(settings, n, shapes, verify))
    r = rows[-1]
    print(f"{n:,} clients ({r['size_gb']:.1f} GB): open {r['open_s']:.3f} s, round "
          f"{r['round_s']:.3f} s, resume {r['resume_s']:.3f} s")
  return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame, settings: StoreSettings) -> str:
  m = settings.clients_per_round
  lines = [f'| clients | store (GB) | page cache | open (s) | round of {m}: read / write / commit (s) | '
           f'round total (s) | memory added by open and {settings.rounds} rounds (MB) | resume after '
           'kill -9 (s) | before: whole-file check at open (s) | before: prune at commit (s) | '
           'verify on demand (s) |', '|' + '---|' * 11]
  for _, r in table.iterrows():
    lines.append(
        f'| {int(r.clients):,} | {r.size_gb:.2f} | {"cold" if r.get("cold") else "warm"} | '
        f'{r.open_s:.3f} | {r.read_s:.3f} / '
        f'{r.write_s:.3f} / {r.commit_s:.4f} | {r.round_s:.3f} | {r.peak_delta_mb:.0f} | '
        f'{r.resume_s:.3f} | {r.get("full_quick_check_s", float("nan")):.1f} | '
        f'{r.old_prune_s:.3f} | {r.get("verify_s", float("nan")):.1f} |')
  return '\n'.join(lines)


def populations(values: Sequence[str]) -> tuple[int, ...]:
  """`--store_clients` values ('10000', '100k') as integers."""
  out = []
  for v in values:
    v = v.strip().lower()
    scale = 1_000 if v.endswith('k') else 1
    try:
      out.append(int(float(v.rstrip('k')) * scale))
    except ValueError as e:
      raise ValueError(f'--store_clients: {v!r} is not a number of clients (e.g. 30000 or 30k)') from e
  return tuple(out)
