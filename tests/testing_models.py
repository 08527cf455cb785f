"""A tiny model for hand-checkable tests: prediction = (u + v) * x, squared loss.

u (layer `shared`) and v (layer `personal`) are scalars, so each SGD step is
one line of arithmetic: with r = (u + v) x - y, both gradients are 2 r x
(Keras' MeanSquaredError averages over the batch).
"""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.models import partition as partition_lib

INPUT_SPEC = (tf.TensorSpec([None, 1], tf.float32), tf.TensorSpec([None, 1], tf.float32))


def keras_model_fn():
  x = tf.keras.Input([1])
  shared = tf.keras.layers.Dense(1, use_bias=False, kernel_initializer='zeros', name='shared')(x)
  personal = tf.keras.layers.Dense(1, use_bias=False, kernel_initializer='zeros', name='personal')(x)
  return tf.keras.Model(x, shared + personal)


def personal_layer(model):
  return model.get_layer('personal').variables


def model_fn():
  return partition_lib.build_reconstruction_model(keras_model_fn(), personal_layer, INPUT_SPEC)


def dataset(xs, ys, batch_size=1):
  return tf.data.Dataset.from_tensor_slices(
      (np.array(xs, np.float32)[:, None], np.array(ys, np.float32)[:, None])).batch(batch_size)


def weights(value):
  return tff.learning.models.ModelWeights([np.array([[value]], np.float32)], [])


def scalar(w):
  return float(np.asarray(w.trainable[0]).reshape(()))


def client_data(clients: dict[str, tuple[list, list]]):
  """In-memory `ClientData` of (x, y) examples."""
  return tff.simulation.datasets.TestClientData({
      cid: collections.OrderedDict(x=np.array(xs, np.float32)[:, None],
                                   y=np.array(ys, np.float32)[:, None])
      for cid, (xs, ys) in clients.items()})
