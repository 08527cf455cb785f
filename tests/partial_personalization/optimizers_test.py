"""Clipped and scheduled optimizers (partial_personalization/templates/optimizers.py)."""

import numpy as np
import pytest
import tensorflow as tf

from partial_personalization.templates import optimizers


def _steps(optimizer, gradients, n=1):
  weights = tuple(tf.zeros_like(g) for g in gradients)
  state = optimizer.initialize(tuple(tf.TensorSpec(g.shape, g.dtype) for g in gradients))
  for _ in range(n):
    state, weights = optimizer.next(state, weights, gradients)
  return [np.asarray(w) for w in weights]


def test_clipping_scales_the_global_norm_and_keeps_small_gradients():
  big = (tf.constant([3.0, 0.0]), tf.constant([[4.0]]))  # Global norm 5.
  w = _steps(optimizers.build_optimizer('sgd', 1.0, clip_norm=0.5), big)
  np.testing.assert_allclose(w[0], [-0.3, 0.0], rtol=1e-6)
  np.testing.assert_allclose(w[1], [[-0.4]], rtol=1e-6)
  small = (tf.constant([0.03, 0.0]), tf.constant([[0.04]]))
  w = _steps(optimizers.build_optimizer('sgd', 1.0, clip_norm=0.5), small)
  np.testing.assert_allclose(w[0], [-0.03, 0.0], rtol=1e-6)


def test_warmup_then_linear_decay_by_hand():
  schedule = optimizers.warmup_decay(1.0, total_steps=10, warmup_fraction=0.2)
  got = [float(schedule(tf.constant(i))) for i in range(11)]
  np.testing.assert_allclose(got, [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8,
                                   1 / 8, 0.0], rtol=1e-6)


def test_scheduled_sgd_steps_follow_the_schedule():
  g = (tf.constant([1.0]),)
  opt = optimizers.build_optimizer('sgd', 1.0, total_steps=4, warmup_fraction=0.0)
  # Rates 1, 3/4, 2/4, 1/4: weights -1, -1.75, -2.25, -2.5.
  assert _steps(opt, g, n=4)[0] == pytest.approx([-2.5])


def test_server_adam_uses_a_larger_epsilon():
  g = (tf.constant([1e-4]),)
  client = _steps(optimizers.build_optimizer('adam', 1.0), g)[0][0]
  server = _steps(optimizers.build_optimizer('adam', 1.0, epsilon=optimizers.SERVER_EPSILON),
                  g)[0][0]
  # TFF's first Adam step: lr sqrt(1 - b2) / (1 - b1) * m / (sqrt(v) + eps), with
  # m = (1 - b1) g and v = (1 - b2) g^2 (epsilon is not bias-corrected).
  m, root_v, scale = 0.1 * 1e-4, np.sqrt(0.001) * 1e-4, np.sqrt(0.001) / 0.1
  assert client == pytest.approx(-scale * m / (root_v + 1e-7), rel=1e-4)
  assert server == pytest.approx(-scale * m / (root_v + 1e-3), rel=1e-4)
  assert abs(server) < abs(client) / 100  # Small server updates are damped.


@pytest.mark.parametrize('kwargs', [dict(name='rmsprop', learning_rate=1.0),
                                    dict(name='sgd', learning_rate=0.0),
                                    dict(name='sgd', learning_rate=1.0, clip_norm=-1.0),
                                    dict(name='sgd', learning_rate=1.0, warmup_fraction=1.0)])
def test_bad_settings_are_rejected(kwargs):
  with pytest.raises(ValueError):
    optimizers.build_optimizer(**kwargs)
