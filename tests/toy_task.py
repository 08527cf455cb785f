"""A toy task, written as docs/design.md's "how to add a task" says: a module
with `create_task` returning a `PersonalizationTask` (registered in a test with
one `registry.TaskSpec` line, `spec()`).

4 clients, 2 features, 2 classes, each client with its own label rule (odd
clients flip it), so a personal head helps; in memory, no files.
"""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.models import task as task_lib
from tasks import registry

INPUT_SPEC = (tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None], tf.int32))


def _split(seed: int) -> tff.simulation.datasets.ClientData:
  rng = np.random.default_rng(seed)
  clients = {}
  for i in range(4):
    x = rng.normal(size=(12, 2)).astype(np.float32)
    y = ((x[:, 0] > 0) ^ (i % 2 == 1)).astype(np.int32)  # Odd clients flip the rule.
    clients[f'client{i}'] = collections.OrderedDict(x=x, y=y)
  return tff.simulation.datasets.TestClientData(clients)


def create_task(cache_dir, *, personalization='head', dropout=0.0, batch_size=4,
                max_elements_per_client=12):
  del cache_dir, dropout  # In memory, no dropout.

  def keras_model_fn():
    x = tf.keras.Input([2])
    h = tf.keras.layers.Dense(4, activation='relu', name='body')(x)
    return tf.keras.Model(x, tf.keras.layers.Dense(2, name='head')(h))

  def batches(dataset):
    return dataset.map(lambda e: (e['x'], e['y'])).batch(batch_size)

  return task_lib.PersonalizationTask(
      name='toy', train_data=_split(0), heldout_data=_split(1), test_data=_split(2),
      train_preprocess_fn=lambda d, seed: batches(d.shuffle(12, seed=seed).take(
          max_elements_per_client)),
      eval_preprocess_fn=batches, keras_model_fn=keras_model_fn,
      loss_fn=lambda: tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics_fn=lambda: [tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')],
      input_spec=INPUT_SPEC, partition_name=personalization,
      partition_fn=lambda m: m.get_layer('head').variables if personalization == 'head' else [])



def spec() -> registry.TaskSpec:
  """The task's registry line."""
  import toy_task  # pylint: disable=g-import-not-at-top,import-self
  return registry.TaskSpec(module=toy_task, options={}, grid_partitions={'head': ('head', 0)},
                           grid_defaults=(0.1, 0.1, 12))
