"""What the image classification tasks (EMNIST, GLDv2) share: batching, loss, metric.

A task supplies per-example maps from its raw elements to (image float32
[H, W, C], label int32 []): a random one for training (augmentation) and a
deterministic one for evaluation. Training datasets are shuffled with the
round's seed, capped, then batched; accuracy is Keras'
`SparseCategoricalAccuracy`, so per-client weights are test examples.
"""

from typing import Callable

import tensorflow as tf

from partial_personalization.models import partition as partition_lib
from partial_personalization.models import task as task_lib


def create_classification_task(
    *,
    name: str,
    train_data, heldout_data, test_data,
    train_map_fn: Callable[[dict, tf.Tensor], tuple],
    eval_map_fn: Callable[[dict], tuple],
    image_shape: tuple,
    keras_model_fn: Callable[[], tf.keras.Model],
    partition_name: str,
    partition_fn: partition_lib.PartitionFn,
    from_logits: bool = True,
    batch_size: int,
    max_elements_per_client: int,
    shuffle_buffer_size: int,
    eval_batch_size: int,
    data_files: tuple[str, ...] = (),
) -> task_lib.PersonalizationTask:
  """Builds the `PersonalizationTask` of an image classification task.

  Args:
    train_map_fn: (raw element, int32 [2] seed) -> (image, label); the seed
      makes augmentation reproducible per round.
    eval_map_fn: raw element -> (image, label).
    image_shape: (H, W, C) of mapped images.
    from_logits: False for models ending in softmax (TFF's MobileNetV2).
    data_files: See `PersonalizationTask.data_files`.
  """

  def train_preprocess_fn(dataset, seed):
    dataset = task_lib.round_sample(dataset, seed=seed, shuffle_buffer_size=shuffle_buffer_size,
                                    max_elements=max_elements_per_client)
    # Per-example augmentation seeds derived from the round seed and position.
    dataset = dataset.enumerate().map(
        lambda i, x: train_map_fn(x, tf.stack([tf.cast(seed, tf.int64), i])),
        num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size)

  def eval_preprocess_fn(dataset):
    return dataset.map(eval_map_fn, num_parallel_calls=tf.data.AUTOTUNE).batch(eval_batch_size)

  spec = (tf.TensorSpec([None, *image_shape], tf.float32), tf.TensorSpec([None], tf.int32))
  return task_lib.PersonalizationTask(
      name=name,
      train_data=train_data, heldout_data=heldout_data, test_data=test_data,
      train_preprocess_fn=train_preprocess_fn,
      eval_preprocess_fn=eval_preprocess_fn,
      keras_model_fn=keras_model_fn,
      loss_fn=lambda: tf.keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits),
      metrics_fn=lambda: [tf.keras.metrics.SparseCategoricalAccuracy(name='accuracy')],
      input_spec=spec,
      partition_name=partition_name,
      partition_fn=partition_fn,
      data_files=data_files,
  )
