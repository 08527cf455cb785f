"""The SQLite client-state store: persistence, round commits, rollback, bad files."""

import sqlite3
import sys

import numpy as np
import pytest
import tensorflow_federated as tff

from partial_personalization.state import client_state

MW = tff.learning.models.ModelWeights


def _w(x):
  return MW([np.full([2, 3], x, np.float32), np.array([x], np.float32)], [np.int64(7)])


def _value(w):
  return float(w.trainable[1][0])


def test_unseen_clients_get_initial_and_writes_persist(tmp_path):
  path = str(tmp_path / 's.sqlite')
  store = client_state.ClientStateStore(path, _w(0.0))
  assert [_value(w) for w in store.read(['a', 'b'], before_round=1)] == [0.0, 0.0]
  store.write(1, ['a'], [_w(1.0)])
  store.commit(1)
  store.write(2, ['a', 'b'], [_w(2.0), _w(2.5)])
  store.commit(2)
  store.close()
  reopened = client_state.ClientStateStore(path, _w(0.0))
  assert reopened.committed_round == 2
  got = reopened.read(['a', 'b', 'c'], before_round=3)
  assert [_value(w) for w in got] == [2.0, 2.5, 0.0]
  assert got[0].trainable[0].shape == (2, 3) and got[0].non_trainable[0] == 7
  assert reopened.client_ids() == ['a', 'b']
  assert reopened.participations(['a', 'b', 'c'], before_round=3) == [2, 1, 0]


def test_rollback_drops_uncommitted_rounds_only(tmp_path):
  store = client_state.ClientStateStore(str(tmp_path / 's.sqlite'), _w(0.0))
  store.write(1, ['a'], [_w(1.0)])
  store.commit(1)
  store.write(2, ['a', 'b'], [_w(2.0), _w(2.0)])   # round 2 never committed
  assert store.rollback() == 2
  assert [_value(w) for w in store.read(['a', 'b'], before_round=10)] == [1.0, 0.0]


def test_uncommitted_rounds_between_checkpoints_survive_until_commit(tmp_path):
  store = client_state.ClientStateStore(str(tmp_path / 's.sqlite'), _w(0.0))
  store.write(1, ['a'], [_w(1.0)])
  store.write(2, ['a'], [_w(2.0)])
  # Round 3 of the same process reads round 2's uncommitted write.
  assert _value(store.read(['a'], before_round=3)[0]) == 2.0
  store.commit(2)
  rows = store._conn.execute('SELECT round, participations FROM personal').fetchall()
  assert rows == [(2, 2)]   # round 1's row is pruned; its count carried forward


def test_commit_prunes_the_clients_of_the_rounds_it_covers(tmp_path):
  store = client_state.ClientStateStore(str(tmp_path / 's.sqlite'), _w(0.0))
  store.write(1, ['a', 'b'], [_w(1.0), _w(1.0)])
  store.commit(1)
  store.write(2, ['b', 'c'], [_w(2.0), _w(2.0)])
  store.write(3, ['c', 'd'], [_w(3.0), _w(3.0)])
  store.commit(3)   # Covers rounds 2 and 3.
  store.write(4, ['a'], [_w(4.0)])
  store.commit(4)
  rows = store._conn.execute(
      'SELECT client_id, round, participations FROM personal ORDER BY client_id').fetchall()
  assert rows == [('a', 4, 2), ('b', 2, 2), ('c', 3, 2), ('d', 3, 1)]
  plan = ' '.join(r[-1] for r in store._conn.execute(
      'EXPLAIN QUERY PLAN SELECT client_id FROM personal WHERE round > 1 AND round <= 2'))
  assert 'personal_by_round' in plan   # A round's rows without a scan.


def _store_of_many_clients(path, n=300):
  store = client_state.ClientStateStore(str(path), _w(0.0))
  ids = [f'client{i:04d}' for i in range(n)]
  store.write(1, ids, [_w(float(i)) for i in range(n)])
  store.commit(1)
  store.close()   # Checkpoints the WAL into the file.
  return ids


def test_a_corrupt_personal_page_is_reported_before_use_and_by_verify(tmp_path):
  path = tmp_path / 's.sqlite'
  ids = _store_of_many_clients(path)
  assert client_state.ClientStateStore.open_existing(str(path)).verify() == len(ids)
  conn = sqlite3.connect(str(path))
  root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'personal'").fetchone()[0]
  page_size = conn.execute('PRAGMA page_size').fetchone()[0]
  conn.close()
  with open(path, 'r+b') as f:   # The personal table's root page: every lookup goes through it.
    f.seek((root - 1) * page_size)
    f.write(np.random.default_rng(0).bytes(page_size))
  before = path.read_bytes()
  store = client_state.ClientStateStore(str(path), _w(0.0))   # The bounded open passes.
  with pytest.raises(client_state.ClientStateError, match='store is corrupt'):
    store.read(ids[:3], before_round=2)
  with pytest.raises(client_state.ClientStateError, match='store is corrupt'):
    store.verify()
  store.close()
  assert path.read_bytes() == before


def test_verify_names_a_row_whose_hash_does_not_match(tmp_path):
  path = tmp_path / 's.sqlite'
  _store_of_many_clients(path, n=5)
  conn = sqlite3.connect(str(path))
  conn.execute("UPDATE personal SET sha256 = 'x' WHERE client_id = 'client0003'")
  conn.commit()
  conn.close()
  store = client_state.ClientStateStore.open_existing(str(path))
  with pytest.raises(client_state.ClientStateError, match="client 'client0003'.*checksum"):
    store.verify()
  store.close()


def test_open_existing_refuses_a_missing_store(tmp_path):
  with pytest.raises(client_state.ClientStateError, match='no client-state store'):
    client_state.ClientStateStore.open_existing(str(tmp_path / 'missing.sqlite'))
  assert not (tmp_path / 'missing.sqlite').exists()


def test_structure_mismatch_is_a_clear_error(tmp_path):
  path = str(tmp_path / 's.sqlite')
  client_state.ClientStateStore(path, _w(0.0)).close()
  other = MW([np.zeros([4], np.float32)], [])
  with pytest.raises(client_state.ClientStateError, match='experiment_name'):
    client_state.ClientStateStore(path, other)


def test_corrupt_file_is_a_clear_error_and_is_kept(tmp_path):
  path = tmp_path / 's.sqlite'
  path.write_bytes(b'this is not sqlite' * 100)
  with pytest.raises(client_state.ClientStateError, match='not a readable client-state store'):
    client_state.ClientStateStore(str(path), _w(0.0))
  assert path.read_bytes() == b'this is not sqlite' * 100


def test_failed_write_is_all_or_nothing(tmp_path):
  store = client_state.ClientStateStore(str(tmp_path / 's.sqlite'), _w(0.0))
  with pytest.raises(ValueError):
    store.write(1, ['a', 'b'], [_w(1.0)])
  store._conn.execute('CREATE TRIGGER fail BEFORE INSERT ON personal WHEN NEW.client_id = "b" '
                      'BEGIN SELECT RAISE(ABORT, "disk full"); END')
  with pytest.raises(sqlite3.DatabaseError):
    store.write(1, ['a', 'b'], [_w(1.0), _w(1.0)])
  assert store._conn.execute('SELECT COUNT(*) FROM personal').fetchone()[0] == 0


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
