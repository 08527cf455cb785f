"""Plain-Python references of the update rules, for the tiny model of
`testing_models` (prediction = (u + v) x, squared loss, batch size 1, so the
gradient of either scalar is g = 2 ((u + v) x - y) x).

Pillutla et al., ICML 2022, Algorithm 1: FedAlt and FedSim rounds, and the
processes they are checked against.
"""

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import algorithms
import testing_models as tm

LR, PERSONAL_LR = 0.1, 0.05
CLIENTS = {  # (x, y) examples; different sizes to check the weighted mean.
    'a': ([1.0, 2.0], [2.0, 1.0]),
    'b': ([0.5, -1.0, 1.5], [1.0, 0.0, 2.0]),
}


def grad(u, v, x, y):
  return 2.0 * ((u + v) * x - y) * x


def reference_client(u, v, xs, ys, *, alternating, tau_u, tau_v, steps=False):
  """Returns (u_local, v_local, examples in the u pass)."""
  def batches(tau):
    pairs = list(zip(xs, ys))
    if steps:
      return [pairs[i % len(pairs)] for i in range(tau)]
    return pairs * tau

  if alternating:
    for x, y in batches(tau_v):
      v -= PERSONAL_LR * grad(u, v, x, y)
    seen = batches(tau_u)
    for x, y in seen:
      u -= LR * grad(u, v, x, y)
  else:
    seen = batches(tau_u)
    for x, y in seen:
      g = grad(u, v, x, y)       # one gradient for both, at the same point
      u, v = u - LR * g, v - PERSONAL_LR * g
  return u, v, len(seen)


def reference_round(u, vs, *, server_lr=1.0, uniform=False, **kwargs):
  updates, weights, new_vs = [], [], []
  for (xs, ys), v in zip(CLIENTS.values(), vs):
    u_local, v_local, n = reference_client(u, v, xs, ys, **kwargs)
    updates.append(u - u_local)
    weights.append(1 if uniform else n)
    new_vs.append(v_local)
  mean_update = np.dot(updates, weights) / np.sum(weights)
  return u - server_lr * mean_update, new_vs


def build_process(algorithm, tau_u=1, tau_v=1, local_unit='epochs', server_lr=1.0,
             weighting=tff.learning.ClientWeighting.NUM_EXAMPLES):
  passes = dict(tau_u=tau_u, tau_v=tau_v) if algorithm == 'fedalt' else dict(tau_u=tau_u)
  return getattr(algorithms, f'build_{algorithm}_process')(
      tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
      client_optimizer=tff.learning.optimizers.build_sgdm(LR),
      personal_optimizer=tff.learning.optimizers.build_sgdm(PERSONAL_LR),
      server_optimizer=tff.learning.optimizers.build_sgdm(server_lr),
      local_unit=local_unit, client_weighting=weighting, **passes)


# FFGG on the same model (ffgg_test, byzantine_test): client sizes differ and
# batches of 2 make the full-batch mean matter.
FFGG_CLIENTS = {'a': ([1.0, 2.0, -1.0], [2.0, 1.0, 0.5]), 'b': ([0.5, -1.0], [1.0, 0.0])}
GAMMA, ALPHA = 0.3, 0.05  # Server step size, fine-tuning step size (client LR: LR).


def build_ffgg(tau_v=2, local_steps=1, **kwargs):
  return algorithms.build_ffgg_process(
      tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
      client_optimizer=tff.learning.optimizers.build_sgdm(LR),
      personal_optimizer=tff.learning.optimizers.build_sgdm(ALPHA),
      server_optimizer=tff.learning.optimizers.build_sgdm(GAMMA),
      tau_v=tau_v, local_steps=local_steps,
      client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES, **kwargs)


def ffgg_datasets():
  return [tm.dataset(xs, ys, batch_size=2) for xs, ys in FFGG_CLIENTS.values()]
