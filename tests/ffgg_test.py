"""FFGG (Mishchenko et al., TMLR 2025), simulated attacks and asynchronous rounds.

Tiny model: prediction = (u + v) x, squared loss; the gradient of either scalar
on one example is 2 ((u + v) x - y) x.
"""

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import asynchronous
from partial_personalization import byzantine
from partial_personalization import client_state
from partial_personalization import client_work
from partial_personalization import personalized_process
from partial_personalization import training_loop
import testing_models as tm

CLIENTS = {  # (x, y); sizes differ, batches of 2 make the full-batch mean matter.
    'a': ([1.0, 2.0, -1.0], [2.0, 1.0, 0.5]),
    'b': ([0.5, -1.0], [1.0, 0.0]),
}
GAMMA, ALPHA, LR = 0.3, 0.05, 0.1


def _full_grad(u, v, xs, ys):
  return float(np.mean([2.0 * ((u + v) * x - y) * x for x, y in zip(xs, ys)]))


def _process(tau_v=2, local_steps=1, **kwargs):
  return personalized_process.build_ffgg_process(
      tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
      client_optimizer=tff.learning.optimizers.build_sgdm(LR),
      personal_optimizer=tff.learning.optimizers.build_sgdm(ALPHA),
      server_optimizer=tff.learning.optimizers.build_sgdm(GAMMA),
      finetune_steps=tau_v, local_steps=local_steps,
      client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES, **kwargs)


@pytest.fixture(scope='module')
def ffgg():
  return _process()


def _datasets():
  return [tm.dataset(xs, ys, batch_size=2) for xs, ys in CLIENTS.values()]


def test_server_step_is_a_plain_gradient_step(ffgg):
  """tau_v GD steps on each v_i, then u <- u - gamma * weighted mean of grad_u."""
  u0, vs = 0.2, [0.1, -0.3]
  state = ffgg.set_model_weights(ffgg.initialize(), tm.weights(u0))
  state, new_vs, metrics = ffgg.next(state, [tm.weights(v) for v in vs], _datasets())
  grads, sizes, tuned = [], [], []
  for (xs, ys), v in zip(CLIENTS.values(), vs):
    for _ in range(2):  # Algorithm 2: full-batch GD on v, u fixed.
      v -= ALPHA * _full_grad(u0, v, xs, ys)
    tuned.append(v)
    grads.append(_full_grad(u0, v, xs, ys))
    sizes.append(len(xs))
  expected_u = u0 - GAMMA * np.dot(grads, sizes) / np.sum(sizes)
  assert tm.scalar(ffgg.get_model_weights(state)) == pytest.approx(expected_u, rel=1e-5)
  assert [tm.scalar(v) for v in new_vs] == pytest.approx(tuned, rel=1e-5)
  assert metrics['client_work']['loss'] > 0


def test_without_finetuning_it_is_gradient_descent_on_the_pooled_loss(ffgg):
  """tau_v = 0: the step equals Keras' gradient of the mean loss over all examples."""
  process = _process(tau_v=0)
  state = process.set_model_weights(process.initialize(), tm.weights(0.2))
  state, _, _ = process.next(state, [tm.weights(0.1)] * 2, _datasets())
  model = tm.keras_model_fn()
  model.get_layer('shared').kernel.assign([[0.2]])
  model.get_layer('personal').kernel.assign([[0.1]])
  xs = np.concatenate([v[0] for v in CLIENTS.values()])[:, None]
  ys = np.concatenate([v[1] for v in CLIENTS.values()])[:, None]
  with tf.GradientTape() as tape:
    loss = tf.keras.losses.MeanSquaredError()(ys, model(xs))
  grad = tape.gradient(loss, model.get_layer('shared').kernel)
  expected = 0.2 - GAMMA * float(grad.numpy().ravel()[0])
  assert tm.scalar(process.get_model_weights(state)) == pytest.approx(expected, rel=1e-5)


def test_local_ffgg_sends_the_mean_of_its_gradients():
  process = _process(tau_v=0, local_steps=3)
  state = process.set_model_weights(process.initialize(), tm.weights(0.2))
  xs, ys = CLIENTS['a']
  outputs = process.client_step(state, [tm.weights(0.1)], [tm.dataset(xs, ys, 2)])
  u, grads = 0.2, []
  for _ in range(3):
    grads.append(_full_grad(u, 0.1, xs, ys))
    u -= LR * grads[-1]
  sent = float(np.ravel(outputs[0].shared_update[0])[0])
  assert sent == pytest.approx(np.mean(grads), rel=1e-5)


def test_byzantine_clients_send_the_attack_and_robust_aggregation_resists(ffgg, tmp_path):
  attack = byzantine.ByzantineAttack(0.5, 'flip', scale=10.0, seed=0)
  ids = list(CLIENTS)
  byz = attack.byzantine_clients(ids)
  assert len(byz) == 1
  store = client_state.ClientStateStore(str(tmp_path / 's.sqlite'), tm.weights(0.0))
  runner = training_loop.PersonalizedRunner(ffgg, store, attack=attack,
                                            byzantine_ids=frozenset(byz))
  state = ffgg.set_model_weights(ffgg.initialize(), tm.weights(0.2))
  honest_out = ffgg.client_step(state, [tm.weights(0.0)] * 2, _datasets())
  g = {c: float(np.ravel(o.shared_update[0])[0]) for c, o in zip(ids, honest_out)}
  new_state, _ = runner.run_round(state, 1, ids, _datasets())
  sent = {c: (-10.0 * g[c] if c in byz else g[c]) for c in ids}
  sizes = {c: len(CLIENTS[c][0]) for c in ids}
  expected = 0.2 - GAMMA * sum(sent[c] * sizes[c] for c in ids) / sum(sizes.values())
  assert tm.scalar(ffgg.get_model_weights(new_state)) == pytest.approx(expected, rel=1e-5)
  noise = byzantine.ByzantineAttack(0.5, 'noise', scale=2.0, seed=0)
  a, b = noise.corrupt([np.zeros(3)], 1, 'a'), noise.corrupt([np.zeros(3)], 1, 'a')
  np.testing.assert_array_equal(a[0], b[0])  # Seeded by (seed, round, client).
  assert np.std(noise.corrupt([np.zeros(1000)], 1, 'a')[0]) == pytest.approx(2.0, rel=0.1)
  store.close()


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
  process = personalized_process.build_fedalt_process(
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
