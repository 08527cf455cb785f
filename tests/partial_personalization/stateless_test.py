"""Stateless clients: v_i reset to v_0 at every participation, and TFF's FedRecon.

Reference: the FedAlt rule of `algorithm_reference` with v = v_0 at the
start of every client update. TFF's `build_fed_recon` configured as stateless
FedAlt (reconstruction on the whole dataset for tau_v epochs, then tau_u epochs
on u, example-weighted mean, same optimizers) must give the same u: its local
variables start from the model's initializer, here zeros, which is our v_0.
"""

import sys

import pytest
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.programs import round_runners
from partial_personalization.state import client_state
import algorithm_reference as ref
import testing_models as tm

V0 = 0.0  # the zero initializer of the test model's personal layer


def _datasets():
  return [tm.dataset(*xy) for xy in ref.CLIENTS.values()]


def test_stateless_runner_restarts_from_v0_and_stores_nothing(tmp_path):
  process = ref.build_process('fedalt', tau_u=2, tau_v=3)
  store = client_state.ClientStateStore(str(tmp_path / 'state.sqlite'), tm.weights(V0))
  runner = round_runners.PersonalizedRunner(process, store, initial_shared=tm.weights(0.3),
                                            stateless=True)
  state = runner.initialize()
  ids = list(ref.CLIENTS)
  u = 0.3
  for round_num in (1, 2):
    state, _ = runner.run_round(state, round_num, ids, _datasets())
    store.commit(round_num)
    # Every round starts from v_0, not from the v_i of the round before.
    u, _ = ref.reference_round(u, [V0, V0], alternating=True, tau_u=2, tau_v=3)
    assert tm.scalar(process.get_model_weights(state)) == pytest.approx(u, rel=1e-5)
  assert store.participations(ids, 3) == [0, 0]
  assert [tm.scalar(w) for w in store.read(ids, before_round=3)] == [V0, V0]


def test_stateful_runner_differs(tmp_path):
  # The same two rounds with persisted v_i give another u (the test above can fail).
  process = ref.build_process('fedalt', tau_u=2, tau_v=3)
  store = client_state.ClientStateStore(str(tmp_path / 'state.sqlite'), tm.weights(V0))
  runner = round_runners.PersonalizedRunner(process, store, initial_shared=tm.weights(0.3))
  state = runner.initialize()
  for round_num in (1, 2):
    state, _ = runner.run_round(state, round_num, list(ref.CLIENTS), _datasets())
  stateless_u, _ = ref.reference_round(0.3, [V0, V0], alternating=True, tau_u=2, tau_v=3)
  stateless_u, _ = ref.reference_round(stateless_u, [V0, V0], alternating=True, tau_u=2, tau_v=3)
  assert tm.scalar(process.get_model_weights(state)) != pytest.approx(stateless_u, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize('tau_u,tau_v', [(1, 1), (2, 3)])
def test_stateless_fedalt_equals_tff_fed_recon(tau_u, tau_v):
  ours = ref.build_process('fedalt', tau_u=tau_u, tau_v=tau_v)
  recon = tff.learning.algorithms.build_fed_recon(
      tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(ref.LR),
      reconstruction_optimizer_fn=tff.learning.optimizers.build_sgdm(ref.PERSONAL_LR),
      server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0),
      dataset_split_fn=tff.learning.models.ReconstructionModel.build_dataset_split_fn(
          recon_epochs=tau_v, post_recon_epochs=tau_u, split_dataset=False))
  state = ours.set_model_weights(ours.initialize(), tm.weights(0.3))
  recon_state = recon.set_model_weights(recon.initialize(), tm.weights(0.3))
  for _ in range(2):
    state, _, _ = ours.next(state, [tm.weights(V0)] * 2, _datasets())
    recon_state = recon.next(recon_state, _datasets()).state
    assert tm.scalar(ours.get_model_weights(state)) == pytest.approx(
        tm.scalar(recon.get_model_weights(recon_state)), rel=1e-5)


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
