"""Client, personal and server optimizers: `tff.learning.optimizers` by name,
with the two additions the paper's recipe needs.

* Global-norm gradient clipping of each step (the reference code of Pillutla
  et al. clips client gradients at norm 0.25), as a wrapper of any TFF
  optimizer: TFF optimizers have no clipping, and TFF's `tff.aggregators`
  clipping acts on whole client updates, not on steps.
* A learning-rate schedule over the optimizer's steps, through TFF's own
  `tff.learning.optimizers.schedule_learning_rate`: linear warmup over the
  first `warmup` steps, then linear decay to 0 at `total_steps`. On the server
  a step is a round, so this is the reference code's warmup/decay over rounds.
"""

from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

Optimizer = tff.learning.optimizers.Optimizer

OPTIMIZERS = {
    'sgd': lambda lr, eps: tff.learning.optimizers.build_sgdm(learning_rate=lr),
    'sgdm': lambda lr, eps: tff.learning.optimizers.build_sgdm(learning_rate=lr, momentum=0.9),
    'adam': lambda lr, eps: tff.learning.optimizers.build_adam(learning_rate=lr, epsilon=eps),
    'adagrad': lambda lr, eps: tff.learning.optimizers.build_adagrad(learning_rate=lr,
                                                                      epsilon=eps),
    'yogi': lambda lr, eps: tff.learning.optimizers.build_yogi(learning_rate=lr, epsilon=eps),
}
# Adaptive server optimizers use epsilon 1e-3 (Keras: 1e-7): Reddi et al.,
# "Adaptive Federated Optimization", ICLR 2021, found tau = 1e-3 best for
# FedAdam / FedYogi / FedAdagrad across their tasks. Clients keep 1e-7.
SERVER_EPSILON = 1e-3
CLIENT_EPSILON = 1e-7


class _GlobalNormClipped(Optimizer):
  """`optimizer` applied to gradients scaled to global norm <= `max_norm`."""

  def __init__(self, optimizer: Optimizer, max_norm: float):
    self._optimizer = optimizer
    self._max_norm = max_norm

  def initialize(self, specs):
    return self._optimizer.initialize(specs)

  def next(self, state, weights, gradients):
    flat, _ = tf.clip_by_global_norm(tf.nest.flatten(gradients), self._max_norm)
    return self._optimizer.next(state, weights, tf.nest.pack_sequence_as(gradients, flat))

  def get_hparams(self, state):
    return self._optimizer.get_hparams(state)

  def set_hparams(self, state, hparams):
    return self._optimizer.set_hparams(state, hparams)


def warmup_decay(learning_rate: float, *, total_steps: int, warmup_fraction: float):
  """Step -> learning rate: linear warmup over `warmup_fraction * total_steps`
  steps (from lr / warmup steps), then linear decay to 0 at `total_steps`."""
  warmup = max(1, int(round(warmup_fraction * total_steps))) if warmup_fraction else 0
  total = max(total_steps, warmup + 1)

  def schedule(step):
    step = tf.cast(step, tf.float32)
    up = tf.minimum(1.0, (step + 1.0) / warmup) if warmup else 1.0
    down = tf.maximum(0.0, (total - step) / max(total - warmup, 1))
    return learning_rate * tf.minimum(up, tf.minimum(1.0, down))

  return schedule


def build_optimizer(name: str, learning_rate: float, *, epsilon: float = CLIENT_EPSILON,
                    clip_norm: float = 0.0, total_steps: Optional[int] = None,
                    warmup_fraction: float = 0.0) -> Optimizer:
  """The optimizer `name` (a key of `OPTIMIZERS`) at `learning_rate`.

  Args:
    epsilon: Of the adaptive optimizers (adam, yogi, adagrad); the server's is
      `SERVER_EPSILON`.
    clip_norm: > 0 clips each step's gradients to this global norm.
    total_steps: With it, the learning rate follows `warmup_decay` over that
      many steps (on the server: rounds); without it, it is constant.
    warmup_fraction: Share of `total_steps` spent warming up (0 to 1).

  Raises:
    ValueError: an unknown name, or a negative setting.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f'unknown optimizer {name!r}; choose one of {sorted(OPTIMIZERS)}')
  if learning_rate <= 0 or clip_norm < 0 or not 0 <= warmup_fraction < 1:
    raise ValueError(f'optimizer {name}: need learning rate > 0, clip norm >= 0 and '
                     f'warmup fraction in [0, 1); got {learning_rate}, {clip_norm}, '
                     f'{warmup_fraction}')
  optimizer = OPTIMIZERS[name](learning_rate, epsilon)
  if total_steps:
    optimizer = tff.learning.optimizers.schedule_learning_rate(
        optimizer, warmup_decay(learning_rate, total_steps=total_steps,
                                warmup_fraction=warmup_fraction))
  if clip_norm:
    optimizer = _GlobalNormClipped(optimizer, clip_norm)
  return optimizer
