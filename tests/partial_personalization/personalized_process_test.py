"""FedAlt and FedSim update rules, step by step, against a plain-Python reference.

Reference (Pillutla et al., ICML 2022, Algorithm 1) on the model
prediction = (u + v) x with squared loss, batch size 1, so the gradient of
either scalar is g = 2 ((u + v) x - y) x.
"""

import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import algorithms
import algorithm_reference as ref
import testing_models as tm

@pytest.mark.parametrize('algorithm,tau_u,tau_v,unit,server_lr,uniform', [
    ('fedalt', 1, 1, 'epochs', 1.0, False),
    ('fedalt', 2, 3, 'epochs', 0.5, False),
    ('fedalt', 3, 2, 'steps', 1.0, False),
    ('fedalt', 2, 1, 'epochs', 1.0, True),  # Clients of 2 and 3 examples count 1 each.
    ('fedsim', 1, 1, 'epochs', 1.0, False),
    ('fedsim', 4, 1, 'steps', 0.5, False),
])
def test_two_rounds_match_reference(algorithm, tau_u, tau_v, unit, server_lr, uniform):
  process = ref.build_process(algorithm, tau_u, tau_v, unit, server_lr,
                     tff.learning.ClientWeighting.UNIFORM if uniform
                     else tff.learning.ClientWeighting.NUM_EXAMPLES)
  state = process.initialize()
  state = process.set_model_weights(state, tm.weights(0.3))
  u, vs = 0.3, [0.25, -0.5]
  personal = [tm.weights(v) for v in vs]
  datasets = [tm.dataset(*xy) for xy in ref.CLIENTS.values()]
  for _ in range(2):
    state, personal, metrics = process.next(state, personal, datasets)
    u, vs = ref.reference_round(u, vs, server_lr=server_lr, uniform=uniform,
                            alternating=(algorithm == 'fedalt'),
                            tau_u=tau_u, tau_v=tau_v, steps=(unit == 'steps'))
    assert tm.scalar(process.get_model_weights(state)) == pytest.approx(u, rel=1e-5)
    assert [tm.scalar(p) for p in personal] == pytest.approx(vs, rel=1e-5)
    assert metrics['client_work']['loss'] > 0


@pytest.mark.parametrize('algorithm', ['fedalt', 'fedsim'])
def test_builders_take_only_their_own_hyperparameters(algorithm):
  opt = tff.learning.optimizers.build_sgdm
  builder = getattr(algorithms, f'build_{algorithm}_process')
  taus = dict(tau_u=2, tau_v=3) if algorithm == 'fedalt' else dict(tau_u=2)
  process = builder(tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
                    client_optimizer=opt(ref.LR), personal_optimizer=opt(ref.PERSONAL_LR), **taus)
  state = process.set_model_weights(process.initialize(), tm.weights(0.3))
  state, personal, _ = process.next(state, [tm.weights(0.25), tm.weights(-0.5)],
                                    [tm.dataset(*xy) for xy in ref.CLIENTS.values()])
  u, vs = ref.reference_round(0.3, [0.25, -0.5], alternating=(algorithm == 'fedalt'),
                          tau_u=2, tau_v=3)
  assert tm.scalar(process.get_model_weights(state)) == pytest.approx(u, rel=1e-5)
  assert [tm.scalar(p) for p in personal] == pytest.approx(vs, rel=1e-5)
  with pytest.raises(TypeError, match='prox_strength'):
    builder(tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
            client_optimizer=opt(ref.LR), prox_strength=0.1)


def _shuffled(seed):
  xs = np.array([1.0, 2.0, -1.0, 0.5, 1.5, -0.5], np.float32)
  return tf.data.Dataset.from_tensor_slices((xs[:, None], (2.0 * xs + 1.0)[:, None])).shuffle(
      8, seed=seed).take(3).batch(1)


def test_fedalt_passes_draw_their_shuffles_in_order():
  """Each pass over a shuffled client dataset reshuffles; the v pass must see
  the first shuffle and the u pass the second, on every run (iterator
  creation is otherwise unordered in a graph, see local_training.batches_after)."""
  process = ref.build_process('fedalt')
  u0, v0 = 0.3, 0.25
  # Eager reference: passes over one fresh dataset draw the shuffles in order.
  dataset = _shuffled(11)
  v_pass = [(float(x), float(y)) for x, y in dataset.repeat(1).unbatch()]
  u_pass = [(float(x), float(y)) for x, y in dataset.repeat(1).unbatch()]
  assert v_pass != u_pass  # Otherwise the test could not tell the order.
  v = v0
  for x, y in v_pass:
    v -= ref.PERSONAL_LR * ref.grad(u0, v, x, y)
  u = u0
  for x, y in u_pass:
    u -= ref.LR * ref.grad(u, v, x, y)
  for _ in range(3):
    state = process.set_model_weights(process.initialize(), tm.weights(u0))
    state, personal, _ = process.next(state, [tm.weights(v0)], [_shuffled(11)])
    assert tm.scalar(personal[0]) == pytest.approx(v, rel=1e-5)
    assert tm.scalar(process.get_model_weights(state)) == pytest.approx(u, rel=1e-5)


def test_fedalt_and_fedsim_differ():
  # Same start, one round: FedAlt moves v first, so its u update differs.
  results = []
  for algorithm in ('fedalt', 'fedsim'):
    process = ref.build_process(algorithm)
    state = process.set_model_weights(process.initialize(), tm.weights(0.3))
    state, _, _ = process.next(state, [tm.weights(0.25), tm.weights(-0.5)],
                               [tm.dataset(*xy) for xy in ref.CLIENTS.values()])
    results.append(tm.scalar(process.get_model_weights(state)))
  assert results[0] != pytest.approx(results[1], rel=1e-4)


def test_evaluation_is_per_client_and_does_not_train():
  process = ref.build_process('fedalt')
  results = process.evaluate(tm.weights(1.0), [tm.weights(0.0), tm.weights(1.0)],
                             [tm.dataset(*xy) for xy in ref.CLIENTS.values()])
  for (xs, ys), v, r in zip(ref.CLIENTS.values(), (0.0, 1.0), results):
    losses = [((1.0 + v) * x - y) ** 2 for x, y in zip(xs, ys)]
    total, count = r['loss']
    assert count == len(xs)
    assert total / count == pytest.approx(np.mean(losses), rel=1e-5)


def test_bad_arguments_are_named():
  with pytest.raises(TypeError, match='tau_v'):  # A hyperparameter FedSim does not have.
    algorithms.build_fedsim_process(
        tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
        client_optimizer=tff.learning.optimizers.build_sgdm(ref.LR), tau_v=2)
  with pytest.raises(ValueError, match='local_unit'):
    ref.build_process('fedalt', local_unit='minutes')
  with pytest.raises(ValueError, match='client_weighting'):
    ref.build_process('fedalt', weighting='uniform')  # The enum, not its name.
  with pytest.raises(ValueError, match='nothing to federate'):
    algorithms.build_fedalt_process(
        lambda: tm.partition_lib.build_reconstruction_model(
            tm.keras_model_fn(), lambda m: m.variables, tm.INPUT_SPEC),
        loss_fn=tf.keras.losses.MeanSquaredError,
        client_optimizer=tff.learning.optimizers.build_sgdm(ref.LR))


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
