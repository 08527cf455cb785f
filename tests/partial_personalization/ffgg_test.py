"""FFGG (Mishchenko et al., TMLR 2025) against hand-computed gradient steps.

Tiny model: prediction = (u + v) x, squared loss; the gradient of either scalar
on one example is 2 ((u + v) x - y) x.
"""

import sys

import numpy as np
import pytest
import tensorflow as tf

import algorithm_reference as ref
import testing_models as tm

CLIENTS = ref.FFGG_CLIENTS
GAMMA, ALPHA, LR = ref.GAMMA, ref.ALPHA, ref.LR
_process = ref.build_ffgg
_datasets = ref.ffgg_datasets


def _full_grad(u, v, xs, ys):
  return float(np.mean([2.0 * ((u + v) * x - y) * x for x, y in zip(xs, ys)]))


@pytest.fixture(scope='module')
def ffgg():
  return _process()


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


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
