"""Byzantine clients (simulated attacks) through the training loop.

A Byzantine client replaces its `shared_update` before aggregation; with FFGG
on the tiny model (prediction = (u + v) x, squared loss) the server's step is
a hand-computable mean of the honest gradients and the attack.
"""

import sys

import numpy as np
import pytest

from partial_personalization.programs import byzantine
from partial_personalization.state import client_state
import algorithm_reference as ref
import testing_models as tm

CLIENTS, GAMMA = ref.FFGG_CLIENTS, ref.GAMMA
_datasets = ref.ffgg_datasets


@pytest.fixture(scope='module')
def ffgg():
  return ref.build_ffgg()


def test_byzantine_clients_send_the_attack_and_robust_aggregation_resists(ffgg, tmp_path):
  attack = byzantine.ByzantineAttack(0.5, 'flip', scale=10.0, seed=0)
  ids = list(CLIENTS)
  byz = attack.byzantine_clients(ids)
  assert len(byz) == 1
  store = client_state.ClientStateStore(str(tmp_path / 's.sqlite'), tm.weights(0.0))
  runner = byzantine.ByzantineRunner(ffgg, store, attack=attack, byzantine_ids=frozenset(byz))
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


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
