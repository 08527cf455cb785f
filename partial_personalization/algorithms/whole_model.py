"""Whole-model algorithms: Ditto and pFedMe, their client updates and builders.

Here every client keeps a whole personal model v_i (same type as the global
model u), as in the "full personalization" rows of Pillutla et al. (ICML 2022,
Table 2); the model is built with the `none` partition. Both client updates
follow the `templates.client_work` contract, as FedAlt's and FedSim's.

* Ditto (Li et al., ICML 2021, Algorithm 1): the global part is FedAvg's local
  SGD on u for `tau_u` passes; the personal model takes `tau_v` passes of
      v <- v - lr_v (grad F_i(v) + lambda (v - u_t))
  toward the broadcast u_t, from the stored v_i.
* pFedMe (Dinh et al., NeurIPS 2020, Algorithm 1): the local model w starts at
  u_t; for each batch, `inner_steps` gradient steps solve the Moreau-envelope
  problem  theta ~ argmin f(theta; batch) + lambda/2 ||theta - w||^2  with
      theta <- theta - lr_v (grad f(theta) + lambda (theta - w)),
  then  w <- w - lr_u lambda (w - theta).  theta starts at u_t each round (as in
  the authors' code) and its last value is the client's personal model. The
  server's `(1 - beta) u + beta mean(w)` is server SGD with learning rate beta
  on the averaged update u - w.

Steps are taken by `tff.learning.optimizers` given the gradients above (the
prox terms added), so with SGD they are the papers' rules exactly; optimizer
states start fresh each round, as in `local_training`.
"""

from typing import Callable, Optional

import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.algorithms import defaults
from partial_personalization.models import partition
from partial_personalization.templates import client_work
from partial_personalization.templates import local_training

ModelWeights = tff.learning.models.ModelWeights


def _step(optimizer, state, variables, grads):
  """One optimizer step assigned to `variables`; returns the new state."""
  state, new_values = optimizer.next(state, tuple(variables), tuple(grads))
  local_training.assign(tuple(variables), new_values)
  return state


def _check(prox_strength, tau_u, tau_v, local_unit):
  if prox_strength < 0:
    raise ValueError(f'prox_strength (lambda) must be >= 0, got {prox_strength}')
  if tau_u < 1 or tau_v < 0:
    raise ValueError(f'need tau_u >= 1 and tau_v >= 0, got {tau_u}, {tau_v}')
  if local_unit not in local_training.LOCAL_UNITS:
    raise ValueError(f'local_unit must be one of {local_training.LOCAL_UNITS}')


def _output(initial, final, num_examples, personal, metrics) -> client_work.ClientOutput:
  return client_work.ClientOutput(
      shared_update=[a - b for a, b in zip(initial, final)],
      update_weight=tf.cast(num_examples, tf.float32),
      personal_weights=personal,
      metrics=local_training.read_metrics(metrics),
  )


def build_ditto_client_update(
    *,
    model_fn: partition.ModelFn,
    loss_fn: Callable[[], tf.keras.losses.Loss],
    metrics_fn: Optional[Callable[[], list[tf.keras.metrics.Metric]]],
    weights_type: tff.types.Type,
    data_type: tff.types.Type,
    client_optimizer: tff.learning.optimizers.Optimizer,
    personal_optimizer: tff.learning.optimizers.Optimizer,
    prox_strength: float,
    tau_u: int = 1,
    tau_v: int = 1,
    local_unit: str = 'epochs',
) -> tff.Computation:
  """Ditto's client: `(u, v_i, dataset) -> ClientOutput` (see module docstring).

  Args:
    model_fn: A `ReconstructionModel` whose variables are all global (the
      `none` partition); u and v_i both have its `weights_type`.
    client_optimizer: Optimizer of the global pass (FedAvg's local SGD).
    personal_optimizer: Optimizer of the personal steps (SGD: lr_v).
    prox_strength: lambda, the pull of v_i toward u_t (Ditto's Eq. 2).
    tau_u, tau_v, local_unit: Passes of the global and personal updates.

  Returns:
    The same OrderedDict as `local_training.build_client_update`; metrics are of
    the global pass. Raises ValueError for negative lambda or bad passes.
  """
  _check(prox_strength, tau_u, tau_v, local_unit)

  @tff.tensorflow.computation(weights_type, weights_type, data_type)
  def client_update(shared, personal, dataset):
    model, metrics, variables, _ = local_training.model_parts(model_fn, loss_fn, metrics_fn)
    loss = loss_fn()

    @tf.function
    def update(shared, personal, dataset):
      anchor = [tf.identity(t) for t in shared.trainable]
      pull = lambda vs: [prox_strength * (v - a) for v, a in zip(vs, anchor)]
      local_training.assign(variables, personal)
      personal_pass = local_training.local_sgd(
          model, loss,
          [local_training.Trainable(tuple(variables.trainable), personal_optimizer, pull)],
          local_training.phase_dataset(dataset, tau_v, local_unit))
      new_personal = local_training.read_weights(variables)
      local_training.assign(variables, shared)
      num_examples = local_training.local_sgd(
          model, loss, [local_training.Trainable(tuple(variables.trainable), client_optimizer)],
          local_training.phase_dataset(dataset, tau_u, local_unit),
          metrics=metrics, after=[personal_pass])
      return _output(anchor, variables.trainable, num_examples, new_personal, metrics)

    return update(shared, personal, dataset)

  return client_update


def build_pfedme_client_update(
    *,
    model_fn: partition.ModelFn,
    loss_fn: Callable[[], tf.keras.losses.Loss],
    metrics_fn: Optional[Callable[[], list[tf.keras.metrics.Metric]]],
    weights_type: tff.types.Type,
    data_type: tff.types.Type,
    client_optimizer: tff.learning.optimizers.Optimizer,
    personal_optimizer: tff.learning.optimizers.Optimizer,
    prox_strength: float,
    inner_steps: int = 5,
    tau_u: int = 1,
    local_unit: str = 'epochs',
) -> tff.Computation:
  """pFedMe's client: `(u, v_i, dataset) -> ClientOutput` (see module docstring).

  Args:
    model_fn, weights_type, data_type: As `build_ditto_client_update`.
    client_optimizer: Steps w with gradient lambda (w - theta) (SGD: eta).
    personal_optimizer: Steps theta in the inner solver (SGD: its step size).
    prox_strength: lambda of the Moreau envelope.
    inner_steps: K, inner gradient steps per batch.
    tau_u, local_unit: Passes over the data of the outer loop.

  Returns:
    As `build_ditto_client_update`; the incoming v_i is not used (theta
    restarts at u_t) and the new v_i is the last theta. Metrics are of theta
    before each batch's inner steps.
  """
  _check(prox_strength, tau_u, 0, local_unit)
  if inner_steps < 1:
    raise ValueError(f'inner_steps (K) must be >= 1, got {inner_steps}')

  @tff.tensorflow.computation(weights_type, weights_type, data_type)
  def client_update(shared, personal, dataset):
    del personal  # theta restarts from u_t (Dinh et al.'s implementation).
    model, metrics, variables, _ = local_training.model_parts(model_fn, loss_fn, metrics_fn)
    loss = loss_fn()

    @tf.function
    def update(shared, dataset):
      initial = [tf.identity(t) for t in shared.trainable]
      local_training.assign(variables, shared)
      theta = variables.trainable
      w = tuple(tf.identity(t) for t in initial)
      theta_state = personal_optimizer.initialize(local_training.specs(theta))
      w_state = client_optimizer.initialize(local_training.specs(w))
      num_examples = tf.constant(0, tf.int64)
      for batch in local_training.batches_after(
          local_training.phase_dataset(dataset, tau_u, local_unit)):
        for k in range(inner_steps):
          with tf.GradientTape() as tape:
            output = model.forward_pass(batch, training=True)
            batch_loss = loss(output.labels, output.predictions)
          if k == 0:  # Metrics and example count once per batch.
            local_training.record_metrics(metrics, output, batch_loss)
            num_examples += tf.cast(output.num_examples, tf.int64)
          grads = tape.gradient(batch_loss, theta)
          theta_state = _step(
              personal_optimizer, theta_state, theta,
              [g + prox_strength * (v - a) for g, v, a in zip(grads, theta, w)])
        w_state, w = client_optimizer.next(
            w_state, w, tuple(prox_strength * (a - v) for a, v in zip(w, theta)))
      new_personal = local_training.read_weights(variables)
      return _output(initial, w, num_examples, new_personal, metrics)

    return update(shared, dataset)

  return client_update


def build_ditto_process(
    model_fn: defaults.ModelFn, *, loss_fn: defaults.LossFn,
    metrics_fn: defaults.MetricsFn = None, client_optimizer: defaults.Optimizer,
    personal_optimizer: Optional[defaults.Optimizer] = None,
    server_optimizer: Optional[defaults.Optimizer] = None, prox_strength: float = 0.1,
    tau_u: int = 1, tau_v: int = 1, local_unit: str = 'epochs', model_aggregator=None,
    distributor=None, metrics_aggregator=None, client_weighting=defaults.NUM_EXAMPLES,
    evaluation_loss_fn: Optional[defaults.LossFn] = None) -> defaults.PersonalizedProcess:
  """Ditto (Li et al., ICML 2021): FedAvg on the global model and, per client,
  a whole personal model pulled toward it with `prox_strength`; `model_fn`
  has no personal variables (the `none` partition)."""
  shared_type, _, data_type = defaults.process_types(model_fn, 'ditto', whole_model=True)
  update = build_ditto_client_update(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, weights_type=shared_type,
      data_type=data_type, client_optimizer=client_optimizer,
      personal_optimizer=personal_optimizer or client_optimizer,
      prox_strength=prox_strength, tau_u=tau_u, tau_v=tau_v, local_unit=local_unit)
  return defaults.compose_with_defaults(
      model_fn, update, loss_fn=loss_fn, metrics_fn=metrics_fn, server_optimizer=server_optimizer,
      model_aggregator=model_aggregator, distributor=distributor,
      metrics_aggregator=metrics_aggregator,
      client_weighting=client_weighting, evaluation_loss_fn=evaluation_loss_fn,
      whole_model=True)


build_ditto_process.__doc__ += defaults.PARTS_DOC


def build_pfedme_process(
    model_fn: defaults.ModelFn, *, loss_fn: defaults.LossFn,
    metrics_fn: defaults.MetricsFn = None, client_optimizer: defaults.Optimizer,
    personal_optimizer: Optional[defaults.Optimizer] = None,
    server_optimizer: Optional[defaults.Optimizer] = None, prox_strength: float = 1.0,
    inner_steps: int = 5, tau_u: int = 1, local_unit: str = 'epochs', model_aggregator=None,
    distributor=None, metrics_aggregator=None, client_weighting=defaults.NUM_EXAMPLES,
    evaluation_loss_fn: Optional[defaults.LossFn] = None) -> defaults.PersonalizedProcess:
  """pFedMe (T. Dinh et al., NeurIPS 2020): per batch, `inner_steps` steps of
  the Moreau-envelope problem with `prox_strength`, then the local global model
  moves toward it; `model_fn` has no personal variables."""
  shared_type, _, data_type = defaults.process_types(model_fn, 'pfedme', whole_model=True)
  update = build_pfedme_client_update(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, weights_type=shared_type,
      data_type=data_type, client_optimizer=client_optimizer,
      personal_optimizer=personal_optimizer or client_optimizer,
      prox_strength=prox_strength, inner_steps=inner_steps, tau_u=tau_u,
      local_unit=local_unit)
  return defaults.compose_with_defaults(
      model_fn, update, loss_fn=loss_fn, metrics_fn=metrics_fn, server_optimizer=server_optimizer,
      model_aggregator=model_aggregator, distributor=distributor,
      metrics_aggregator=metrics_aggregator,
      client_weighting=client_weighting, evaluation_loss_fn=evaluation_loss_fn,
      whole_model=True)


build_pfedme_process.__doc__ += defaults.PARTS_DOC
