"""Two models on the same test sentences of each client, sentence by sentence.

A client's accuracy change between two models (e.g. FedAlt's personalized
model and the FedAvg baseline) is measured on a few hundred to a few thousand
tokens: the change of one client can be test noise. To tell a client that
personalization really hurt from one it hurt by chance, both models are
evaluated on the same sentences, and the per-sentence results feed a paired
test (`intervals.client_change_intervals`, a bootstrap over the client's
sentences, as Pillutla et al. 2022 report per-client changes, Sec. 5).

`build_paired_evaluation` is a TFF computation:
  (u_a@SERVER, v_a@CLIENTS, u_b@SERVER, v_b@CLIENTS, data@CLIENTS)
    -> float32[sentences, 3]@CLIENTS
one row per example (sentence) of the client's data, in order: the metric's
total under model a, its total under model b, and its count (for a token
accuracy: correct tokens under a, under b, and the tokens counted). The
forward passes run on whole batches; the metric is then taken row by row.
"""

from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.models import partition
from partial_personalization.templates import composers
from partial_personalization.templates import local_training

# Clients per TFF call: bounds the datasets and results held at once.
CHUNK = 64


def build_paired_evaluation(model_fn: partition.ModelFn, *,
                            metrics_fn: Callable[[], list[tf.keras.metrics.Metric]],
                            metric: str) -> tff.Computation:
  """The paired per-sentence evaluation (module docstring) of `metric`, one of
  `metrics_fn()`'s mean metrics (state variables [total, count]).

  Raises:
    ValueError: `metrics_fn` has no metric named `metric`.
  """
  shared_type, personal_type, data_type = composers.model_types(model_fn)
  with tf.Graph().as_default():
    names = [m.name for m in metrics_fn()]
  if metric not in names:
    raise ValueError(f'`metric`={metric!r} is not one of the task\'s metrics {names}')

  @tff.tensorflow.computation(shared_type, personal_type, shared_type, personal_type, data_type)
  def client_evaluation(shared_a, personal_a, shared_b, personal_b, dataset):
    models = []
    for shared, personal in ((shared_a, personal_a), (shared_b, personal_b)):
      model, _, shared_vars, personal_vars = local_training.model_parts(model_fn, None, None)
      models.append((model, shared_vars, personal_vars, shared, personal))
    scorer = next(m for m in metrics_fn() if m.name == metric)

    def row_totals(labels, predictions):
      """The metric's (total, count) of each row of a batch, row after row
      (the metric is stateful: one row in flight, reset, update, read)."""
      def body(i, rows):
        resets = [v.assign(tf.zeros_like(v)) for v in scorer.variables]
        with tf.control_dependencies(resets):
          update = scorer.update_state(labels[i:i + 1], predictions[i:i + 1])
        with tf.control_dependencies([update] if update is not None else resets):
          total, count = [tf.cast(v.read_value(), tf.float32) for v in scorer.variables]
        return i + 1, rows.write(i, tf.stack([total, count]))

      n = tf.shape(labels)[0]
      _, rows = tf.while_loop(lambda i, _: i < n, body,
                              (0, tf.TensorArray(tf.float32, size=n, element_shape=[2])),
                              parallel_iterations=1)
      return rows.stack()

    @tf.function
    def run():
      for model, shared_vars, personal_vars, shared, personal in models:
        local_training.assign(shared_vars, shared)
        local_training.assign(personal_vars, personal)
      rows = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False)
      index = 0
      for batch in local_training.batches_after(dataset):
        out_a = models[0][0].forward_pass(batch, training=False)
        out_b = models[1][0].forward_pass(batch, training=False)
        a = row_totals(out_a.labels, out_a.predictions)
        b = row_totals(out_b.labels, out_b.predictions)
        rows = rows.write(index, tf.stack([a[:, 0], b[:, 0], a[:, 1]], axis=1))
        index += 1
      return tf.reshape(rows.concat(), [-1, 3]) if index > 0 else tf.zeros([0, 3])

    return run()

  @tff.federated_computation(
      tff.FederatedType(shared_type, tff.SERVER), tff.FederatedType(personal_type, tff.CLIENTS),
      tff.FederatedType(shared_type, tff.SERVER), tff.FederatedType(personal_type, tff.CLIENTS),
      tff.FederatedType(data_type, tff.CLIENTS))
  def paired_evaluation(shared_a, personal_a, shared_b, personal_b, client_data):
    return tff.federated_map(client_evaluation, (
        tff.federated_broadcast(shared_a), personal_a, tff.federated_broadcast(shared_b),
        personal_b, client_data))

  return paired_evaluation


def evaluate_pairs(paired_evaluation: tff.Computation, shared_a, personal_a: Sequence,
                   shared_b, personal_b: Sequence, datasets: Sequence,
                   client_ids: Sequence[str], *,
                   progress: Optional[Callable[[int], None]] = None) -> pd.DataFrame:
  """Runs `paired_evaluation` over clients in chunks.

  Returns:
    One row per sentence: `client_id`, `sentence` (its index in the client's
    data), `a`, `b` (the metric's totals, e.g. correct tokens) and `count`.

  Raises:
    ValueError: the per-client sequences differ in length.
  """
  if not len(personal_a) == len(personal_b) == len(datasets) == len(client_ids):
    raise ValueError('personal_a, personal_b, datasets and client_ids must have one entry per '
                     'client')
  frames = []
  for start in range(0, len(client_ids), CHUNK):
    end = start + CHUNK
    results = paired_evaluation(shared_a, list(personal_a[start:end]), shared_b,
                                list(personal_b[start:end]), list(datasets[start:end]))
    for cid, rows in zip(client_ids[start:end], results):
      rows = np.asarray(rows, np.float64).reshape(-1, 3)
      frames.append(pd.DataFrame({'client_id': cid, 'sentence': np.arange(len(rows)),
                                  'a': rows[:, 0], 'b': rows[:, 1], 'count': rows[:, 2]}))
    if progress:
      progress(len(results))
  return pd.concat(frames, ignore_index=True)
