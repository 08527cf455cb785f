"""Asynchronous rounds: arrival order, staleness, delay models, and a real
process through the training loop (Mishchenko et al., TMLR 2025, Sec. 6)."""

import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import algorithms
from partial_personalization.programs import asynchronous
from partial_personalization.programs import training_loop
from partial_personalization.state import client_state
from partial_personalization.templates import client_work
import testing_models as tm

CLIENTS = {'a': ([1.0, 2.0, -1.0], [2.0, 1.0, 0.5]), 'b': ([0.5, -1.0], [1.0, 0.0])}
LR = 0.1


class _RecordingProcess:
  """Stands in for a PersonalizedProcess: u counts applied updates; each
  client's output remembers the u it started from."""

  def initialize(self):
    return 0

  def set_model_weights(self, state, shared):
    return state

  def get_model_weights(self, state):
    return state

  def client_step(self, state, personal, datasets):
    return [client_work.ClientOutput(shared_update=[np.array(float(state))],
                                     update_weight=1.0, personal_weights=p, metrics={})
            for p in personal]

  def server_step(self, state, outputs):
    self.applied.append(float(outputs[0].shared_update[0]))
    return state + 1, {'client_work': {'loss': 1.0}}


def test_simulator_pops_in_arrival_order():
  sim = asynchronous.AsyncSimulator()
  for client, delay in (('a', 3.0), ('b', 1.0), ('c', 2.0), ('d', 1.0)):
    sim.start(client, 0, delay)
  order = [sim.pop() for _ in range(4)]
  assert [x.client_id for x in order] == ['b', 'd', 'c', 'a']  # ties: start order
  assert sim.now == 3.0


def test_async_runner_applies_stale_updates_in_arrival_order(tmp_path):
  delays = asynchronous.DelayModel('exponential', mean=1.0, seed=3)
  process = _RecordingProcess()
  process.applied = []
  store = client_state.ClientStateStore(str(tmp_path / 's.sqlite'), tm.weights(0.0))
  ids = [f'c{i}' for i in range(6)]
  runner = asynchronous.AsyncRunner(process, store, population=ids,
                                    make_dataset=lambda c, s: None, delays=delays,
                                    concurrency=3, seed=0)
  state = runner.initialize()
  for round_num in (1, 2, 3):
    state, metrics = runner.run_round(state, round_num, ids[:2], None)
  assert state == 6
  # Each applied update carries the version it started from; arrival order
  # is by simulated finish time, so versions are not monotone in general.
  _, started, stale, times = zip(*runner.applied)
  assert process.applied == list(started)  # The u each applied update was computed from.
  assert [k - v for k, v in enumerate(started)] == list(stale)
  assert list(times) == sorted(times)  # Applied in arrival order...
  assert list(started) != sorted(started)  # ...which is not start order here.
  assert metrics['async/staleness_max'] == max(stale[4:])
  store.close()


def test_delay_adaptive_scales_stale_updates():
  out = client_work.ClientOutput([np.array([2.0])], 1.0, None, {})
  assert float(asynchronous.scale_update(out, 0.5).shared_update[0][0]) == 1.0
  delays = asynchronous.DelayModel('constant', mean=2.0, slow_fraction=0.5, slow_factor=4.0)
  slow = delays.slow_clients(['a', 'b', 'c', 'd'])
  assert len(slow) == 2
  assert delays.sample('a', 0, slow=True) == 8.0 and delays.sample('a', 0, slow=False) == 2.0


def test_async_fedalt_through_the_training_loop(tmp_path):
  """A real TFF process: resumable rounds, staleness metrics, v_i written on arrival."""
  process = algorithms.build_fedalt_process(
      tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
      client_optimizer=tff.learning.optimizers.build_sgdm(LR))
  data = {c: tm.dataset(xs, ys) for c, (xs, ys) in {**CLIENTS, 'c': ([1.0], [3.0])}.items()}
  store = client_state.ClientStateStore(str(tmp_path / 's.sqlite'), tm.weights(0.0))
  runner = asynchronous.AsyncRunner(
      process, store, population=sorted(data), make_dataset=lambda c, s: data[c],
      delays=asynchronous.DelayModel('uniform', seed=1), concurrency=2, seed=0)
  result = training_loop.run_training(
      runner, run_dir=str(tmp_path / 'run'), store=store, client_ids=sorted(data),
      make_dataset=lambda c, s: data[c], total_rounds=3, clients_per_round=2, seed=0,
      progress=False)
  assert len(runner.applied) == 6 and store.committed_round == 3
  arrived = {c for c, _, _, _ in runner.applied}
  counts = dict(zip(sorted(data), store.participations(sorted(data), 4)))
  assert {c for c, n in counts.items() if n > 0} == arrived
  assert tm.scalar(process.get_model_weights(result.state)) != 0.0
  metrics = pd.read_csv(str(tmp_path / 'run' / 'metrics.csv'))
  assert {'train/async/staleness_mean', 'train/client_work/loss'} <= set(metrics.columns)
  store.close()


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
