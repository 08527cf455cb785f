"""Ditto and pFedMe client updates against hand-computed values.

Model: prediction = (a + b) x, squared loss, batch size 1; both scalars are
global (the `none` partition), so u = (a, b) and v_i is a second (a, b). For
either scalar the loss gradient is g = 2 ((a + b) x - y) x.
"""

import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import algorithms
from partial_personalization.models import partition as partition_lib
import testing_models as tm

LR, PERSONAL_LR, LAMBDA, K = 0.1, 0.05, 0.5, 3
CLIENTS = {'a': ([1.0, 2.0], [2.0, 1.0]), 'b': ([0.5, -1.0, 1.5], [1.0, 0.0, 2.0])}


def _model_fn():
  return partition_lib.build_reconstruction_model(tm.keras_model_fn(), lambda m: [], tm.INPUT_SPEC)


def _weights(a, b):
  return tff.learning.models.ModelWeights(
      [np.array([[a]], np.float32), np.array([[b]], np.float32)], [])


def _pair(w):
  return tuple(float(np.asarray(t).reshape(())) for t in w.trainable)


def _g(w, x, y):
  return 2.0 * ((w[0] + w[1]) * x - y) * x


def ditto_reference(u, v, xs, ys):
  """One epoch each: prox-SGD on v toward u, then plain SGD on u."""
  v = np.array(v, float)
  for x, y in zip(xs, ys):
    v = v - PERSONAL_LR * (_g(v, x, y) + LAMBDA * (v - u))
  w = np.array(u, float)
  for x, y in zip(xs, ys):
    w = w - LR * _g(w, x, y)
  return w, v


def pfedme_reference(u, xs, ys):
  """One epoch: per example, K prox steps on theta, then w moves toward theta."""
  theta, w = np.array(u, float), np.array(u, float)
  for x, y in zip(xs, ys):
    for _ in range(K):
      theta = theta - PERSONAL_LR * (_g(theta, x, y) + LAMBDA * (theta - w))
    w = w - LR * LAMBDA * (w - theta)
  return w, theta


@pytest.fixture(scope='module', params=['ditto', 'pfedme'])
def process(request):
  own = {'ditto': {}, 'pfedme': dict(inner_steps=K)}[request.param]
  return request.param, getattr(algorithms, f'build_{request.param}_process')(
      _model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
      client_optimizer=tff.learning.optimizers.build_sgdm(LR),
      personal_optimizer=tff.learning.optimizers.build_sgdm(PERSONAL_LR),
      server_optimizer=tff.learning.optimizers.build_sgdm(0.5),
      prox_strength=LAMBDA, **own)


def test_one_round_matches_hand_computation(process):
  algorithm, process = process
  u = np.array([0.3, -0.1])
  vs = [np.array([0.2, 0.4]), np.array([-0.3, 0.0])]
  state = process.set_model_weights(process.initialize(), _weights(*u))
  state, personal, _ = process.next(
      state, [_weights(*v) for v in vs], [tm.dataset(*xy) for xy in CLIENTS.values()])

  updates, counts, expected_v = [], [], []
  for (xs, ys), v in zip(CLIENTS.values(), vs):
    if algorithm == 'ditto':
      w, new_v = ditto_reference(u, v, xs, ys)
    else:
      w, new_v = pfedme_reference(u, xs, ys)
    updates.append(u - w)
    counts.append(len(xs))
    expected_v.append(new_v)
  # Server SGD(0.5) on the example-weighted mean update: pFedMe's beta = 0.5.
  expected_u = u - 0.5 * np.average(updates, axis=0, weights=counts)
  assert _pair(process.get_model_weights(state)) == pytest.approx(tuple(expected_u), rel=1e-5)
  for got, want in zip(personal, expected_v):
    assert _pair(got) == pytest.approx(tuple(want), rel=1e-5)


def test_evaluation_uses_the_personal_model_alone(process):
  _, process = process
  xs, ys = CLIENTS['a']
  # u is far off; v_i = (1, 0) predicts x exactly for y = x.
  [r] = process.evaluate(_weights(5.0, 5.0), [_weights(1.0, 0.0)], [tm.dataset(xs, xs)])
  assert r['loss'][0] == pytest.approx(0.0, abs=1e-6)


def test_full_algorithms_refuse_personal_variables():
  with pytest.raises(ValueError, match='none'):
    algorithms.build_ditto_process(
        tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
        client_optimizer=tff.learning.optimizers.build_sgdm(LR))


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
