"""FedAlt: alternating updates of the personal part v_i and the shared part u.

Pillutla et al., "Federated Learning with Partial Model Personalization", ICML
2022, Algorithm 1 with the alternating local update: each sampled client takes
`tau_v` local passes on v_i with u frozen, then `tau_u` passes on u with the
new v_i frozen, and sends u's update; only u's updates are averaged.
"""

from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.algorithms import defaults
from partial_personalization.templates import local_training


def build_fedalt_client_update(
    *, model_fn, loss_fn, metrics_fn, shared_type: tff.types.Type,
    personal_type: tff.types.Type, data_type: tff.types.Type,
    client_optimizer: tff.learning.optimizers.Optimizer,
    personal_optimizer: tff.learning.optimizers.Optimizer, tau_u: int, tau_v: int,
    local_unit: str, personal_l2: float = 0.0) -> tff.Computation:
  """`(u, v_i, dataset) -> templates.client_work.ClientOutput` of FedAlt for one client.

  Args:
    model_fn, loss_fn, metrics_fn: As the builders' (`defaults.PARTS_DOC`).
    shared_type, personal_type: `ModelWeights` types of u and v.
    data_type: `tff.SequenceType` of a client's batches.
    client_optimizer: Optimizer of u; personal_optimizer: of v (fresh state
      every pass).
    tau_u, tau_v: Local epochs (or steps) on u and on v, >= 0.
    local_unit: 'epochs' or 'steps'.
    personal_l2: Weight decay of v: (personal_l2 / 2) ||v||^2 added to the
      loss of the v steps (the paper's regularization study, Sec. 5).

  Returns:
    A computation whose `ClientOutput` carries the metrics of the u pass and
    the examples it saw as the update's weight.

  Raises:
    ValueError: unknown `local_unit`, negative `tau_u` or `tau_v`.
  """
  local_training.check_local_unit(local_unit)
  if tau_u < 0 or tau_v < 0:
    raise ValueError(f'tau_u and tau_v must be >= 0, got {tau_u}, {tau_v}')

  @tff.tensorflow.computation(shared_type, personal_type, data_type)
  def client_update(shared, personal, dataset):
    model, metrics, shared_vars, personal_vars = local_training.model_parts(
        model_fn, loss_fn, metrics_fn)
    loss = loss_fn()
    shared_part = local_training.shared_trainable(shared_vars, client_optimizer)

    @tf.function
    def local_update(shared, personal, dataset):
      local_training.assign(shared_vars, shared)
      local_training.assign(personal_vars, personal)
      initial_shared = tf.nest.map_structure(tf.identity, shared.trainable)
      personal_pass = ()
      if personal_vars.trainable and tau_v > 0:
        personal_pass = [local_training.local_sgd(
            model, loss,
            local_training.personal_trainable(personal_vars, personal_optimizer, personal_l2),
            local_training.phase_dataset(dataset, tau_v, local_unit))]
      num_examples = local_training.local_sgd(
          model, loss, shared_part, local_training.phase_dataset(dataset, tau_u, local_unit),
          metrics=metrics, after=personal_pass)
      return local_training.client_output(initial_shared, shared_vars, personal_vars,
                                          num_examples, metrics)

    return local_update(shared, personal, dataset)

  return client_update


def build_fedalt_process(
    model_fn, *, loss_fn, metrics_fn=None, client_optimizer,
    personal_optimizer: Optional[tff.learning.optimizers.Optimizer] = None,
    server_optimizer=None, tau_u: int = 1, tau_v: int = 1, local_unit: str = 'epochs',
    personal_l2: float = 0.0, model_aggregator=None, distributor=None,
    metrics_aggregator=None, client_weighting=defaults.NUM_EXAMPLES,
    evaluation_loss_fn=None) -> defaults.PersonalizedProcess:
  """FedAlt (Pillutla et al., ICML 2022, Algorithm 1, alternating): `tau_v`
  passes on v_i with u fixed, then `tau_u` passes on u with the new v_i
  (`local_unit`: 'epochs' or 'steps'); `personal_l2` is the weight decay of v.
  """
  shared_type, personal_type, data_type = defaults.process_types(model_fn, 'fedalt')
  update = build_fedalt_client_update(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, shared_type=shared_type,
      personal_type=personal_type, data_type=data_type, client_optimizer=client_optimizer,
      personal_optimizer=personal_optimizer or client_optimizer, tau_u=tau_u, tau_v=tau_v,
      local_unit=local_unit, personal_l2=personal_l2)
  return defaults.compose_with_defaults(
      model_fn, update, loss_fn=loss_fn, metrics_fn=metrics_fn,
      server_optimizer=server_optimizer, model_aggregator=model_aggregator,
      distributor=distributor, metrics_aggregator=metrics_aggregator,
      client_weighting=client_weighting, evaluation_loss_fn=evaluation_loss_fn)


build_fedalt_process.__doc__ += defaults.PARTS_DOC
