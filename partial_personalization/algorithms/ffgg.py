"""FFGG: Fine-tuning Followed by Global Gradient, its client update and builder.

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
composition (`defaults.compose_with_defaults`) with this client update.
"""

from typing import Callable, Optional

import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.algorithms import defaults
from partial_personalization.models import partition
from partial_personalization.templates import client_work
from partial_personalization.templates import local_training


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
      `fedalt.build_fedalt_client_update`.
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
    model, metrics, shared_vars, personal_vars = local_training.model_parts(
        model_fn, loss_fn, metrics_fn)
    loss = loss_fn()

    def full_gradient(variables, record, after):
      """Example-weighted mean of the batch gradients over the dataset, in a
      pass that starts after the tensors `after` (local_training.batches_after)."""
      variables = list(variables)

      sums = [tf.zeros_like(v) for v in variables]
      total = tf.constant(0.0)
      for batch in local_training.batches_after(dataset, after):
        with tf.GradientTape() as tape:
          output = model.forward_pass(batch, training=True)
          batch_loss = loss(output.labels, output.predictions)
        n = tf.cast(output.num_examples, tf.float32)
        grads = tape.gradient(batch_loss, variables)
        if record:
          local_training.record_metrics(metrics, output, batch_loss)
        sums = [s + n * g for s, g in zip(sums, grads)]
        total += n
      return [tf.math.divide_no_nan(s, total) for s in sums], total

    def gd(variables, optimizer, steps, record_last=False, after=()):
      """`steps` full-batch steps, each pass after the previous one; returns
      the mean of their gradients and the examples of the last one (the step
      after the last gradient is not taken when `record_last`: that gradient
      is what the client sends)."""
      state = optimizer.initialize(local_training.specs(variables))
      grad_sum = [tf.zeros_like(v) for v in variables]
      examples = tf.constant(0.0)
      for step in range(steps):  # Unrolled: tau and K are small.
        last = record_last and step == steps - 1
        grads, examples = full_gradient(variables, record=last, after=after)
        after = [examples]
        grad_sum = [a + g for a, g in zip(grad_sum, grads)]
        if not last:
          state, new_values = optimizer.next(state, tuple(variables), tuple(grads))
          local_training.assign(list(variables), list(new_values))
      return [g / steps for g in grad_sum], examples

    @tf.function
    def local_update(shared, personal):
      local_training.assign(shared_vars, shared)
      local_training.assign(personal_vars, personal)
      personal_passes = ()
      if personal_vars.trainable and tau_v > 0:
        personal_passes = [gd(personal_vars.trainable, personal_optimizer, tau_v)[1]]
      update, examples = gd(shared_vars.trainable, client_optimizer, local_steps,
                            record_last=True, after=personal_passes)
      return client_work.ClientOutput(
          shared_update=update,
          update_weight=examples,
          personal_weights=local_training.read_weights(personal_vars),
          metrics=local_training.read_metrics(metrics),
      )

    return local_update(shared, personal)

  return client_update


def build_ffgg_process(
    model_fn: defaults.ModelFn, *, loss_fn: defaults.LossFn,
    metrics_fn: defaults.MetricsFn = None, client_optimizer: defaults.Optimizer,
    personal_optimizer: Optional[defaults.Optimizer] = None,
    server_optimizer: defaults.Optimizer, tau_v: int = 1, local_steps: int = 1,
    model_aggregator=None, distributor=None, metrics_aggregator=None,
    client_weighting=tff.learning.ClientWeighting.UNIFORM,
    evaluation_loss_fn: Optional[defaults.LossFn] = None) -> defaults.PersonalizedProcess:
  """FFGG (Mishchenko et al., TMLR 2025, Algorithms 1, 2, 4): `tau_v`
  full-batch steps on v_i (the fine-tuner of Algorithm 2), then the gradient of u (`local_steps` > 1: Local
  FFGG); the server steps with `server_optimizer` (SGD at gamma). Clients are
  averaged uniformly by default, as the paper's (1/n) sum."""
  shared_type, personal_type, data_type = defaults.process_types(model_fn, 'ffgg')
  update = build_ffgg_client_update(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, shared_type=shared_type,
      personal_type=personal_type, data_type=data_type, client_optimizer=client_optimizer,
      personal_optimizer=personal_optimizer or client_optimizer, tau_v=tau_v,
      local_steps=local_steps)
  return defaults.compose_with_defaults(
      model_fn, update, loss_fn=loss_fn, metrics_fn=metrics_fn, server_optimizer=server_optimizer,
      model_aggregator=model_aggregator, distributor=distributor,
      metrics_aggregator=metrics_aggregator,
      client_weighting=client_weighting, evaluation_loss_fn=evaluation_loss_fn)


build_ffgg_process.__doc__ += defaults.PARTS_DOC
