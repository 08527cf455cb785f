"""The StackOverflow loss: masked mean cross-entropy, computed once per batch."""

import numpy as np
import tensorflow as tf

from tasks.stackoverflow import task as so_task


def _inputs():
  labels = tf.constant([[3, 1, 0, 0], [2, 2, 4, 0]], tf.int64)
  logits = tf.random.stateless_normal([2, 4, 5], seed=[3, 4])
  return labels, logits


def test_loss_is_the_mean_over_non_padding_tokens():
  labels, logits = _inputs()
  loss = so_task.MaskedSparseCrossEntropy()(labels, logits)
  per_token = tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
  mask = labels.numpy() != 0
  np.testing.assert_allclose(float(loss), per_token.numpy()[mask].mean(), rtol=1e-6)


def test_a_repeated_call_on_the_same_tensors_reuses_the_loss():
  """TFF's Keras wrapper computes the loss, then its `loss` metric calls the
  loss again on the same tensors: one softmax must serve both."""
  labels, logits = _inputs()
  loss_fn = so_task.MaskedSparseCrossEntropy()

  @tf.function
  def twice(labels, logits):
    return loss_fn(labels, logits), loss_fn(labels, logits), loss_fn(labels, logits * 2.0)

  graph = twice.get_concrete_function(labels, logits).graph
  softmaxes = [op for op in graph.get_operations()
               if op.type == 'SparseSoftmaxCrossEntropyWithLogits']
  assert len(softmaxes) == 2  # The third call has other logits.
  first, second, other = twice(labels, logits)
  assert float(first) == float(second) and float(other) != float(first)
  # Eagerly, a value given twice is the same value too.
  assert float(loss_fn(labels, logits)) == float(loss_fn(labels, logits))
