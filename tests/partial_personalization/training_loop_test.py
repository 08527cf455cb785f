"""Run directories: exact resume (an interrupted and resumed run gives the
numbers of an uninterrupted one), and every fault of issue 15 ends in a clear
error that names the file, with nothing deleted."""

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import algorithms
from partial_personalization.programs import round_runners
from partial_personalization.programs import training_loop
from partial_personalization.state import client_state
from partial_personalization.state import run_lock
import testing_models as tm

ROUNDS = 4
CLIENTS = {f'c{i}': ([0.5 * i, 1.0, -1.0, 2.0][: 2 + i % 3], [1.0, 0.5 * i, 2.0, 0.0][: 2 + i % 3])
           for i in range(5)}


@pytest.fixture(scope='module')
def process():
  return algorithms.build_fedalt_process(
      tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
      client_optimizer=tff.learning.optimizers.build_sgdm(0.05))


def _run(process, run_dir, total_rounds=ROUNDS, **kwargs):
  data = tm.client_data(CLIENTS)
  store = client_state.ClientStateStore(os.path.join(run_dir, 'client_state.sqlite'), tm.weights(0.0))
  runner = round_runners.PersonalizedRunner(process, store)
  result = training_loop.run_training(
      runner, run_dir=run_dir, store=store, client_ids=sorted(CLIENTS),
      # The shuffle seed matters: each round sees the client's data in a new order.
      make_dataset=lambda cid, seed: data.create_tf_dataset_for_client(cid).shuffle(8, seed=seed)
      .map(lambda e: (e['x'], e['y'])).batch(1),
      total_rounds=total_rounds, clients_per_round=2, seed=3, progress=False, **kwargs)
  personal = {c: tm.scalar(w) for c, w in zip(sorted(CLIENTS), store.read(sorted(CLIENTS), 99))}
  store.close()
  return result, personal


def _snapshot(run_dir):
  """What the run directory holds: every file's bytes, the store's rows (its
  bytes change when SQLite merges its write-ahead log), the lock file aside."""
  files = {}
  for root, _, names in os.walk(run_dir):
    for name in names:
      path = os.path.join(root, name)
      if name == '.lock' or name.endswith(('-wal', '-shm')):
        continue
      if name.endswith('.sqlite'):
        conn = sqlite3.connect(path)
        files[name] = list(conn.iterdump())
        conn.close()
      else:
        with open(path, 'rb') as f:
          files[os.path.relpath(path, run_dir)] = f.read()
  return files


@pytest.fixture
def two_rounds(process, tmp_path):
  """A run directory stopped after 2 committed rounds (the last one round 2)."""
  run_dir = str(tmp_path / 'run')
  _run(process, run_dir, stop_after_rounds=2)
  return run_dir


def _outputs(run_dir, result, personal):
  return (tm.scalar(result.state.global_model_weights), personal,
          pd.read_csv(os.path.join(run_dir, 'metrics.csv')))


def test_interrupted_then_resumed_equals_uninterrupted(process, tmp_path):
  straight = str(tmp_path / 'straight')
  u1, p1, m1 = _outputs(straight, *_run(process, straight))

  broken = str(tmp_path / 'broken')
  first, _ = _run(process, broken, stop_after_rounds=2)
  assert first.rounds_run == 2
  # Simulate a crash in round 3 after its personal writes and a partial checkpoint.
  store = client_state.ClientStateStore(os.path.join(broken, 'client_state.sqlite'), tm.weights(0.0))
  store.write(3, ['c0', 'c1'], [tm.weights(99.0), tm.weights(99.0)])
  store.close()
  os.makedirs(os.path.join(broken, 'checkpoints', 'program_state_3'))
  resumed, personal = _run(process, broken)
  assert resumed.resumed_from == 2 and resumed.rounds_run == 2
  u2, p2, m2 = _outputs(broken, resumed, personal)

  assert u2 == u1
  assert p2 == p1
  assert not any(v == 99.0 for v in p2.values())
  pd.testing.assert_frame_equal(m1, m2)
  assert list(m2['round']) == list(range(1, ROUNDS + 1))
  assert len({round(v, 6) for v in p1.values()}) > 2   # clients really diverged


def test_missing_committed_checkpoint_is_an_error_and_keeps_state(process, tmp_path):
  run_dir = str(tmp_path / 'run')
  _run(process, run_dir, stop_after_rounds=2)
  ckpt = os.path.join(run_dir, 'checkpoints', 'program_state_2')
  os.rename(ckpt, ckpt + '.moved')
  db = os.path.join(run_dir, 'client_state.sqlite')
  before = open(db, 'rb').read()
  with pytest.raises(training_loop.CheckpointError, match='program_state_2'):
    _run(process, run_dir)
  assert open(db, 'rb').read() == before



def test_a_second_writer_is_refused_with_the_holders_pid(process, two_rounds):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; from partial_personalization.state import run_lock\n'
       'with run_lock.exclusive(sys.argv[1]):\n  print("held", flush=True); time.sleep(60)',
       two_rounds], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    before = _snapshot(two_rounds)
    with pytest.raises(run_lock.LockedError, match=f'PID {holder.pid}'):
      _run(process, two_rounds)
    assert _snapshot(two_rounds) == before
  finally:
    holder.kill()  # SIGKILL: the kernel releases the lock.
    holder.wait()
  resumed, _ = _run(process, two_rounds)
  assert resumed.resumed_from == 2


def test_deleted_store_is_an_error_not_a_fresh_start(process, two_rounds):
  os.remove(os.path.join(two_rounds, 'client_state.sqlite'))
  checkpoints = sorted(os.listdir(os.path.join(two_rounds, 'checkpoints')))
  with pytest.raises(training_loop.CheckpointError, match='no committed round'):
    _run(process, two_rounds)
  assert sorted(os.listdir(os.path.join(two_rounds, 'checkpoints'))) == checkpoints


def test_checkpoint_of_another_round_is_refused(process, two_rounds):
  ckpt = os.path.join(two_rounds, 'checkpoints', 'program_state_{}')
  shutil.rmtree(ckpt.format(2))
  shutil.copytree(ckpt.format(1), ckpt.format(2))
  before = _snapshot(two_rounds)
  with pytest.raises(training_loop.CheckpointError, match='program_state_2 is not the checkpoint'):
    _run(process, two_rounds)
  assert _snapshot(two_rounds) == before


def test_corrupt_store_bytes_are_an_error_at_open(two_rounds):
  """Damage to the commit record (the `meta` table's page) is found at open."""
  db = os.path.join(two_rounds, 'client_state.sqlite')
  conn = sqlite3.connect(db)
  root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'meta'").fetchone()[0]
  page_size = conn.execute('PRAGMA page_size').fetchone()[0]
  conn.close()
  with open(db, 'r+b') as f:
    f.seek((root - 1) * page_size)
    f.write(np.random.default_rng(0).bytes(page_size))
  with pytest.raises(client_state.ClientStateError, match='not a readable client-state store'):
    client_state.ClientStateStore(db, tm.weights(0.0))


def test_corrupt_personal_weights_name_the_client(two_rounds):
  db = os.path.join(two_rounds, 'client_state.sqlite')
  conn = sqlite3.connect(db)
  client, blob = conn.execute('SELECT client_id, weights FROM personal LIMIT 1').fetchone()
  conn.execute('UPDATE personal SET weights = ? WHERE client_id = ?',
               (blob[:40] + bytes(32) + blob[72:], client))
  conn.commit()
  conn.close()
  store = client_state.ClientStateStore(db, tm.weights(0.0))
  with pytest.raises(client_state.ClientStateError, match=f"client '{client}'"):
    store.read([client], before_round=99)
  store.close()


def test_non_finite_round_is_not_committed(two_rounds):
  bad = algorithms.build_fedalt_process(
      tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
      client_optimizer=tff.learning.optimizers.build_sgdm(float('nan')))
  with pytest.raises(training_loop.NonFiniteError, match='round 3: clients'):
    _run(bad, two_rounds)
  store = client_state.ClientStateStore(os.path.join(two_rounds, 'client_state.sqlite'),
                                        tm.weights(0.0))
  assert store.committed_round == 2
  assert all(np.isfinite(tm.scalar(w)) for w in store.read(sorted(CLIENTS), 3))
  store.close()


def test_total_rounds_below_the_committed_round_is_an_error(process, two_rounds):
  before = _snapshot(two_rounds)
  with pytest.raises(training_loop.CheckpointError, match='past total_rounds=1'):
    _run(process, two_rounds, total_rounds=1)
  assert _snapshot(two_rounds) == before


def test_stale_temporary_checkpoints_are_removed(process, two_rounds):
  temp = os.path.join(two_rounds, 'checkpoints', 'program_state_3_temp1234')
  os.makedirs(temp)
  _run(process, two_rounds)
  assert not os.path.exists(temp)



def test_disk_full_is_one_clear_error_and_the_run_resumes(process, two_rounds, monkeypatch):
  def full(*args, **kwargs):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(tff.program.FileProgramStateManager, 'save', full)
  with pytest.raises(training_loop.StorageError,
                     match='cannot write .*checkpoints: .*No space left.*after round 2'):
    _run(process, two_rounds)
  monkeypatch.undo()
  resumed, _ = _run(process, two_rounds)
  assert resumed.resumed_from == 2 and resumed.rounds_run == ROUNDS - 2




def test_saved_state_is_written_inside_a_running_event_loop():
  """Jupyter runs cells inside an event loop, where asyncio.run is refused."""
  async def in_a_notebook():
    return training_loop.run_coroutine(asyncio.sleep(0, result='saved'))

  assert asyncio.run(in_a_notebook()) == 'saved'
  assert training_loop.run_coroutine(asyncio.sleep(0, result='plain')) == 'plain'


def test_balanced_sampling_gives_every_client_its_share_of_rounds():
  ids = [f'c{i:02d}' for i in range(53)]
  rounds = [training_loop.sample_clients(ids, 10, 7, r, 'balanced') for r in range(1, 54)]
  assert all(len(set(chosen)) == 10 for chosen in rounds)
  counts = pd.Series([c for chosen in rounds for c in chosen]).value_counts()
  assert counts.min() == counts.max() == 10  # 53 rounds x 10 clients = 10 each.
  after_7 = pd.Series([c for chosen in rounds[:7] for c in chosen]).value_counts()
  assert after_7.reindex(ids, fill_value=0).agg(['min', 'max']).tolist() == [1, 2]
  # Uniform sampling on the same budget leaves clients far apart.
  uniform = pd.Series([c for r in range(1, 54)
                       for c in training_loop.sample_clients(ids, 10, 7, r)]).value_counts()
  assert uniform.reindex(ids, fill_value=0).max() - uniform.reindex(ids, fill_value=0).min() > 2
  # A pure function of (seed, round): a resumed run samples the same clients.
  assert training_loop.sample_clients(ids, 10, 7, 20, 'balanced') == rounds[19]
  assert training_loop.sample_clients(ids, 10, 8, 20, 'balanced') != rounds[19]
  with pytest.raises(ValueError, match='`client_sampling` must be one of'):
    training_loop.sample_clients(ids, 10, 7, 1, 'round_robin')


def test_fedavg_metrics_take_the_names_of_ours():
  fedavg = {'client_work': {'train': {'loss': 2.0, 'accuracy': 0.1}}, 'aggregator': {}}
  ours = {'client_work': {'loss': 2.0, 'accuracy': 0.1}, 'aggregator': {}}
  assert training_loop.flatten_metrics(round_runners.one_naming(fedavg)) == \
      training_loop.flatten_metrics(ours) == {'client_work/loss': 2.0, 'client_work/accuracy': 0.1}
  assert round_runners.one_naming(ours) == ours


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
