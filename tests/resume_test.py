"""Exact resume: an interrupted and resumed run gives the numbers of an uninterrupted one."""

import os
import sys

import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import client_state
from partial_personalization import personalized_process
from partial_personalization import training_loop
import testing_models as tm

ROUNDS = 4
CLIENTS = {f'c{i}': ([0.5 * i, 1.0, -1.0, 2.0][: 2 + i % 3], [1.0, 0.5 * i, 2.0, 0.0][: 2 + i % 3])
           for i in range(5)}


@pytest.fixture(scope='module')
def process():
  return personalized_process.build_personalized_process(
      tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError, algorithm='fedalt',
      client_optimizer=tff.learning.optimizers.build_sgdm(0.05))


def _run(process, run_dir, **kwargs):
  data = tm.client_data(CLIENTS)
  store = client_state.ClientStateStore(os.path.join(run_dir, 'client_state.sqlite'), tm.weights(0.0))
  runner = training_loop.PersonalizedRunner(process, store)
  result = training_loop.run_training(
      runner, run_dir=run_dir, store=store, client_ids=sorted(CLIENTS),
      # The shuffle seed matters: each round sees the client's data in a new order.
      make_dataset=lambda cid, seed: data.create_tf_dataset_for_client(cid).shuffle(8, seed=seed)
      .map(lambda e: (e['x'], e['y'])).batch(1),
      total_rounds=ROUNDS, clients_per_round=2, seed=3, progress=False, **kwargs)
  personal = {c: tm.scalar(w) for c, w in zip(sorted(CLIENTS), store.read(sorted(CLIENTS), 99))}
  store.close()
  return result, personal


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


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
