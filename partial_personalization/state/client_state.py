"""Client-resident personal weights v_i, persisted across rounds in SQLite.

In a deployment v_i lives on device i; in simulation this store plays the part
of all devices. Rows are versioned by round so that a round's writes and the
server checkpoint commit together (see `training_loop`):

1. round r's new v_i are written with `write(r, ...)` in one transaction;
2. the server state of round r is saved (tff.program state manager);
3. `commit(r)` records r as the last complete round.

A crash anywhere leaves `committed_round` at the last complete round; on
resume, `rollback()` drops rows newer than it, so nothing from a half-done
round mixes with the restored server state. `commit` also prunes rows that a
newer committed row supersedes, so the file holds about one row per client.

Schema: `meta(key TEXT PRIMARY KEY, value BLOB)` with `committed_round`,
`initial` (v_0, for clients never seen) and `checkpoint_sha256` (the content
hash of the committed round's server checkpoint, see `training_loop`);
`personal(client_id TEXT, round INTEGER, weights BLOB, participations INTEGER,
sha256 TEXT)`, where `participations` counts the rounds in which the client has
trained v up to that row and `sha256` is the weights blob's hash (checked on
every read; NULL in stores written before it existed). Weights are `.npz`
blobs of `ModelWeights` lists; an index on `personal(round)` finds a round's
rows.

Every per-round cost depends on the round's clients, not on the population
(issue 26: a store of 342k StackOverflow clients is ~46 GB): opening checks the
`meta` table and the schema only (`PRAGMA quick_check(meta)`), each read checks
its rows' hashes and reports a malformed page as `ClientStateError` before the
weights are used, `commit` prunes only the clients written since the previous
commit. `verify()` checks the whole file on demand (SQLite's `quick_check` and
every row's hash; `bazel run //runners:verify_client_state`).
"""

import hashlib
import io
import os
import sqlite3
from typing import Optional, Sequence

import numpy as np
import tensorflow_federated as tff

ModelWeights = tff.learning.models.ModelWeights


# Bytes per SQLite page of new stores (existing stores keep theirs).
PAGE_SIZE = 65536


class ClientStateError(RuntimeError):
  """The store cannot be used as asked (corrupt file, structure mismatch)."""


def serialize_weights(weights: ModelWeights) -> bytes:
  arrays = {f't{i}': np.asarray(w) for i, w in enumerate(weights.trainable)}
  arrays.update({f'n{i}': np.asarray(w) for i, w in enumerate(weights.non_trainable)})
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  return buffer.getvalue()


def deserialize_weights(blob: bytes) -> ModelWeights:
  with np.load(io.BytesIO(blob)) as data:
    def collect(prefix):
      keys = sorted((k for k in data.files if k.startswith(prefix)), key=lambda k: int(k[1:]))
      return [data[k] for k in keys]
    return ModelWeights(trainable=collect('t'), non_trainable=collect('n'))


def _signature(weights: ModelWeights) -> list:
  return [(np.asarray(w).shape, np.asarray(w).dtype.str)
          for w in list(weights.trainable) + list(weights.non_trainable)]


class ClientStateStore:
  """Personal weights keyed by client id, with round-level commits.

  Args:
    path: SQLite file; created with `initial_personal` if missing.
    initial_personal: v_0 given to clients never seen. For an existing store it
      must have the same shapes and dtypes as the stored v_0; None opens an
      existing store with its own v_0 (see `open_existing`).

  Raises:
    ClientStateError: the file is not a store of this kind, or v_0's structure
      differs from the stored one (a different model or partition); the error
      names the file and the fix.
  """

  def __init__(self, path: str, initial_personal: Optional[ModelWeights]):
    self.path = path
    new = not os.path.exists(path)
    if new and initial_personal is None:
      raise ClientStateError(f'{path}: no client-state store there.')
    try:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      self._conn = sqlite3.connect(path, isolation_level=None)
      if new:
        # Before the first table: a client's v_i (~134 KB for `tiny`'s last
        # block, ~3 MB for `mini`'s) spans few pages, so a read is a few large
        # I/Os rather than a chain of 4 KB overflow pages.
        self._conn.execute(f'PRAGMA page_size={PAGE_SIZE}')
      else:
        # Bounded: the meta table (the commit record and v_0) and the schema,
        # not the population's rows (see `verify`).
        check = self._conn.execute('PRAGMA quick_check(meta)').fetchone()[0]
        if check != 'ok':
          raise sqlite3.DatabaseError(f'integrity check failed: {check}')
      self._conn.execute('PRAGMA journal_mode=WAL')
      self._conn.execute('PRAGMA synchronous=FULL')
      with self._transaction():
        self._conn.execute(
            'CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB)')
        self._conn.execute(
            'CREATE TABLE IF NOT EXISTS personal (client_id TEXT NOT NULL, '
            'round INTEGER NOT NULL, weights BLOB NOT NULL, '
            'participations INTEGER NOT NULL, sha256 TEXT, PRIMARY KEY (client_id, round))')
        columns = [r[1] for r in self._conn.execute('PRAGMA table_info(personal)')]
        if 'sha256' not in columns:  # A store of an earlier version.
          self._conn.execute('ALTER TABLE personal ADD COLUMN sha256 TEXT')
        # A round's rows without a scan (commit, rollback); stores of an
        # earlier version get it once, here.
        self._conn.execute(
            'CREATE INDEX IF NOT EXISTS personal_by_round ON personal (round)')
        if new:
          self._set_meta('initial', serialize_weights(initial_personal))
          self._set_meta('committed_round', 0)
      self._initial = deserialize_weights(self._get_meta('initial'))
    except (sqlite3.DatabaseError, ValueError, OSError, TypeError) as e:
      raise ClientStateError(
          f'{path}: not a readable client-state store ({e}). Restore it from a '
          'backup or start a new experiment (another `experiment_name`).') from e
    if initial_personal is not None and (
        _signature(self._initial) != _signature(initial_personal)):
      raise ClientStateError(
          f'{path}: stored personal weights have shapes {_signature(self._initial)}'
          f' but this model needs {_signature(initial_personal)}. The run was '
          'started with another model or personalization; use another '
          '`experiment_name`.')

  @classmethod
  def open_existing(cls, path: str) -> 'ClientStateStore':
    """Opens a store that exists, whatever its model (tools that check or
    read a store). Raises ClientStateError if there is none."""
    return cls(path, None)

  def _transaction(self, mode: str = 'IMMEDIATE'):
    """A write (IMMEDIATE) or read (DEFERRED) transaction: one snapshot, one
    round trip to the journal for a whole round's rows."""
    conn = self._conn

    class _Tx:
      def __enter__(self):
        conn.execute(f'BEGIN {mode}')

      def __exit__(self, exc_type, *_):
        conn.execute('ROLLBACK' if exc_type else 'COMMIT')

    return _Tx()

  def _set_meta(self, key, value):
    self._conn.execute('INSERT OR REPLACE INTO meta VALUES (?, ?)', (key, value))

  def _get_meta(self, key):
    row = self._conn.execute('SELECT value FROM meta WHERE key = ?', (key,)).fetchone()
    if row is None:
      raise ClientStateError(f'{self.path}: missing {key!r}; the store is corrupt.')
    return row[0]

  @property
  def initial(self) -> ModelWeights:
    return self._initial

  @property
  def committed_round(self) -> int:
    return int(self._get_meta('committed_round'))

  def checkpoint_hash(self, round_num: int):
    """The server checkpoint hash committed with `round_num` (None: not recorded)."""
    row = self._conn.execute("SELECT value FROM meta WHERE key = 'checkpoint_sha256'").fetchone()
    if row is None or round_num != self.committed_round:
      return None
    return row[0]

  def bind(self, key: str, value: str, what: str) -> None:
    """Records `value` under `key` the first time; later it must be equal.

    Raises:
      ClientStateError: the store was made with another `what` (names both).
    """
    row = self._conn.execute('SELECT value FROM meta WHERE key = ?', (key,)).fetchone()
    if row is None:
      with self._transaction():
        self._set_meta(key, value)
    elif row[0] != value:
      raise ClientStateError(
          f'{self.path}: this run was trained on another {what} ({row[0][:12]}, now '
          f'{value[:12]}). Resuming would mix the two: restore the {what} the run started '
          'with, or start a new run with another `experiment_name`. Nothing was changed.')

  def _latest(self, columns: str, client_ids: Sequence[str], before_round: int) -> list:
    """`columns` of each client's latest row before `before_round` (None if it
    has none), read in one transaction: one snapshot for the whole round."""
    try:
      with self._transaction('DEFERRED'):
        rows = [self._conn.execute(
            f'SELECT {columns} FROM personal WHERE client_id = ? AND round < ? '
            'ORDER BY round DESC LIMIT 1', (cid, before_round)).fetchone()
                for cid in client_ids]
    except sqlite3.DatabaseError as e:  # A malformed page of the personal table.
      raise ClientStateError(
          f'{self.path}: cannot read the personal weights of clients {list(client_ids)[:5]}'
          f'{"..." if len(client_ids) > 5 else ""} ({e}). The store is corrupt: restore it '
          'from a backup, or start a new run with another `experiment_name`. Nothing was '
          'changed.') from e
    return [row if row else None for row in rows]

  def _weights(self, client_id: str, row) -> ModelWeights:
    round_num, blob, digest = row
    error = None
    if digest is not None and hashlib.sha256(blob).hexdigest() != digest:
      error = 'checksum mismatch'
    else:
      try:
        weights = deserialize_weights(blob)
      except Exception as e:  # np.load raises BadZipFile, ValueError, OSError...
        error = f'{type(e).__name__}: {e}'
    if error:
      raise ClientStateError(
          f'{self.path}: the personal weights of client {client_id!r} (round {round_num}) '
          f'are corrupt ({error}). Restore the store from a backup, or start a new run '
          'with another `experiment_name`. Nothing was changed.')
    return weights

  def read(self, client_ids: Sequence[str], before_round: int) -> list[ModelWeights]:
    """Latest v_i written before `before_round` (v_0 for unseen clients).

    Rows superseded at a commit are pruned, so `before_round` must be past the
    committed round (as in training and final evaluation).

    Raises:
      ClientStateError: a row is corrupt (checksum or format); names the client.
    """
    rows = self._latest('round, weights, sha256', client_ids, before_round)
    return [self._weights(cid, row) if row is not None else self._initial
            for cid, row in zip(client_ids, rows)]

  def write(self, round_num: int, client_ids: Sequence[str],
            weights: Sequence[ModelWeights]) -> None:
    """Writes round `round_num`'s new v_i, all or nothing."""
    if len(client_ids) != len(weights):
      raise ValueError(f'{len(client_ids)} client ids for {len(weights)} weights')
    with self._transaction():
      self._conn.executemany(
          'INSERT OR REPLACE INTO personal VALUES (?1, ?2, ?3, 1 + COALESCE('
          '(SELECT participations FROM personal WHERE client_id = ?1 AND round < ?2 '
          'ORDER BY round DESC LIMIT 1), 0), ?4)',
          [(cid, round_num, blob, hashlib.sha256(blob).hexdigest())
           for cid, blob in ((c, serialize_weights(w)) for c, w in zip(client_ids, weights))])

  def commit(self, round_num: int, checkpoint_sha256: Optional[str] = None) -> None:
    """Marks `round_num` complete (with its server checkpoint's hash, checked
    on resume) and prunes the rows it supersedes.

    Only clients written after the previous commit can have a superseded row
    (each commit prunes those it covers), so the cost is that of the rounds
    committed, not of the population.
    """
    with self._transaction():
      previous = self.committed_round
      self._set_meta('committed_round', round_num)
      if checkpoint_sha256 is None:
        self._conn.execute("DELETE FROM meta WHERE key = 'checkpoint_sha256'")
      else:
        self._set_meta('checkpoint_sha256', checkpoint_sha256)
      self._conn.execute(
          'DELETE FROM personal WHERE client_id IN (SELECT client_id FROM personal '
          'WHERE round > ?1 AND round <= ?2) AND round < (SELECT MAX(p.round) '
          'FROM personal p WHERE p.client_id = personal.client_id AND p.round <= ?2)',
          (previous, round_num))

  def rollback(self) -> int:
    """Drops rows newer than the committed round; returns how many."""
    with self._transaction():
      cursor = self._conn.execute(
          'DELETE FROM personal WHERE round > ?', (self.committed_round,))
    return cursor.rowcount

  def participations(self, client_ids: Sequence[str], before_round: int) -> list[int]:
    """Rounds in which each client trained v, before `before_round` (0: never).

    As `read`, `before_round` must be past the committed round.
    """
    return [row[0] if row else 0
            for row in self._latest('participations', client_ids, before_round)]

  def verify(self) -> int:
    """Checks the whole file: SQLite's `quick_check` and every row's hash and
    format. Reads every row (minutes for a store of many GB); training checks
    only what it reads.

    Returns:
      The number of rows checked.
    Raises:
      ClientStateError: the first problem found (page or row, naming the
        client); nothing is changed.
    """
    try:
      check = self._conn.execute('PRAGMA quick_check').fetchone()[0]
      if check != 'ok':
        raise sqlite3.DatabaseError(f'integrity check failed: {check}')
      rows = 0
      for client_id, round_num, blob, digest in self._conn.execute(
          'SELECT client_id, round, weights, sha256 FROM personal'):
        self._weights(client_id, (round_num, blob, digest))
        rows += 1
    except sqlite3.DatabaseError as e:
      raise ClientStateError(
          f'{self.path}: the store is corrupt ({e}). Restore it from a backup, or start a '
          'new run with another `experiment_name`. Nothing was changed.') from e
    return rows

  def client_ids(self) -> list[str]:
    """Clients with stored personal weights (i.e. that trained at least once)."""
    return [r[0] for r in self._conn.execute(
        'SELECT DISTINCT client_id FROM personal ORDER BY client_id')]

  def close(self) -> None:
    self._conn.close()
