"""FFGG's client update: Fine-tuning Followed by Global Gradient.

Mishchenko, Islamov, Gorbunov, Horvath, "Partially Personalized Federated
Learning: Breaking the Curse of Data Heterogeneity", TMLR 2025 (arXiv
2305.18285):
* Algorithm 2 (local GD fine-tuner): `tau_v` full-batch gradient steps on the
  personal part v_i with u fixed, from the stored v_i (stateful) or from v_0
  (stateless, `--stateless`).
* Algorithm 1 (FFGG): the client then sends g_i = grad_u F_i(u, v_i), the
  gradient of its loss with respect to u at the fine-tuned v_i; the server steps
  u <- u - gamma * mean_i g_i (`server_optimizer`: SGD with learning rate gamma).
* Algorithm 4 (Local FFGG), `local_steps > 1`: K full-batch steps on u with
  `client_optimizer`, v fixed; the client sends the mean of its K gradients
  (our normalization: K=1 is FFGG exactly, and gamma keeps its meaning).

Full-batch gradients are the mean of the batch gradients weighted by batch
examples, over the client's (capped) dataset. The update is TFF's `shared_update`
with its sign convention (a gradient), so the process is FedAlt's
(`personalized_process`) with this client update.
"""

from typing import Callable, Optional

import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import client_work
from partial_personalization import partition


def build_ffgg_client_update(
    *,
    model_fn: partition.ModelFn,
    loss_fn: Callable[[], tf.keras.losses.Loss],
    metrics_fn: Optional[Callable[[], list[tf.keras.metrics.Metric]]],
    shared_type: tff.types.Type,
    personal_type: tff.types.Type,
    data_type: tff.types.Type,
    client_optimizer: tff.learning.optimizers.Optimizer,
    personal_optimizer: tff.learning.optimizers.Optimizer,
    tau_v: int,
    local_steps: int = 1,
) -> tff.Computation:
  """Builds `(u, v_i, dataset) -> ClientOutput` of FFGG for one client.

  Args:
    model_fn, loss_fn, metrics_fn, shared_type, personal_type, data_type: as
      `client_work.build_client_update`.
    client_optimizer: Optimizer of the local u steps (Local FFGG only).
    personal_optimizer: Optimizer of the fine-tuner (SGD: local GD).
    tau_v: Full-batch fine-tuning steps on v (tau of Algorithm 2), >= 0.
    local_steps: Full-batch steps on u (K of Algorithm 4); 1 is FFGG.

  Returns:
    A computation returning a `client_work.ClientOutput`: `shared_update` is
    the mean gradient w.r.t. u.trainable, `personal_weights` the fine-tuned
    v_i, `metrics` those of the last gradient pass, at (u_K-1, v_i).

  Raises:
    ValueError: tau_v < 0 or local_steps < 1.
  """
  if tau_v < 0 or local_steps < 1:
    raise ValueError(f'FFGG needs tau_v >= 0 and local_steps >= 1, got {tau_v}, {local_steps}')

  @tff.tensorflow.computation(shared_type, personal_type, data_type)
  def client_update(shared, personal, dataset):
    model, metrics, shared_vars, personal_vars = client_work.model_parts(
        model_fn, loss_fn, metrics_fn)
    loss = loss_fn()

    def full_gradient(variables, record, after):
      """Example-weighted mean of the batch gradients over the dataset, in a
      pass that starts after the tensors `after` (client_work.batches_after)."""
      variables = list(variables)

      sums = [tf.zeros_like(v) for v in variables]
      total = tf.constant(0.0)
      for batch in client_work.batches_after(dataset, after):
        with tf.GradientTape() as tape:
          output = model.forward_pass(batch, training=True)
          batch_loss = loss(output.labels, output.predictions)
        n = tf.cast(output.num_examples, tf.float32)
        grads = tape.gradient(batch_loss, variables)
        if record:
          client_work.record_metrics(metrics, output, batch_loss)
        sums = [s + n * g for s, g in zip(sums, grads)]
        total += n
      return [tf.math.divide_no_nan(s, total) for s in sums], total

    def gd(variables, optimizer, steps, record_last=False, after=()):
      """`steps` full-batch steps, each pass after the previous one; returns
      the mean of their gradients and the examples of the last one (the step
      after the last gradient is not taken when `record_last`: that gradient
      is what the client sends)."""
      state = optimizer.initialize(client_work.specs(variables))
      grad_sum = [tf.zeros_like(v) for v in variables]
      examples = tf.constant(0.0)
      for step in range(steps):  # Unrolled: tau and K are small.
        last = record_last and step == steps - 1
        grads, examples = full_gradient(variables, record=last, after=after)
        after = [examples]
        grad_sum = [a + g for a, g in zip(grad_sum, grads)]
        if not last:
          state, new_values = optimizer.next(state, tuple(variables), tuple(grads))
          client_work.assign(list(variables), list(new_values))
      return [g / steps for g in grad_sum], examples

    @tf.function
    def local_update(shared, personal):
      client_work.assign(shared_vars, shared)
      client_work.assign(personal_vars, personal)
      personal_passes = ()
      if personal_vars.trainable and tau_v > 0:
        personal_passes = [gd(personal_vars.trainable, personal_optimizer, tau_v)[1]]
      update, examples = gd(shared_vars.trainable, client_optimizer, local_steps,
                            record_last=True, after=personal_passes)
      return client_work.ClientOutput(
          shared_update=update,
          update_weight=examples,
          personal_weights=client_work.read_weights(personal_vars),
          metrics=client_work.read_metrics(metrics),
      )

    return local_update(shared, personal)

  return client_update

