"""FedSim: simultaneous updates of the shared part u and the personal part v_i.

Pillutla et al., "Federated Learning with Partial Model Personalization", ICML
2022, Algorithm 1 with the simultaneous local update: each sampled client
takes `tau_u` local passes in which u and v_i step together, on one gradient
per batch; only u's updates are averaged.
"""

from typing import Optional

import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.algorithms import defaults
from partial_personalization.templates import local_training


def build_fedsim_client_update(
    *, model_fn, loss_fn, metrics_fn, shared_type: tff.types.Type,
    personal_type: tff.types.Type, data_type: tff.types.Type,
    client_optimizer: tff.learning.optimizers.Optimizer,
    personal_optimizer: tff.learning.optimizers.Optimizer, tau_u: int, local_unit: str,
    personal_l2: float = 0.0) -> tff.Computation:
  """`(u, v_i, dataset) -> templates.client_work.ClientOutput` of FedSim for one client.

  Arguments as `fedalt.build_fedalt_client_update`, but `tau_u` (>= 0) counts
  the joint passes on (u, v_i): one gradient per batch steps both, u with
  `client_optimizer`, v with `personal_optimizer` and weight decay
  `personal_l2`. Raises ValueError for an unknown `local_unit` or `tau_u` < 0.
  """
  local_training.check_local_unit(local_unit)
  if tau_u < 0:
    raise ValueError(f'tau_u must be >= 0, got {tau_u}')

  @tff.tensorflow.computation(shared_type, personal_type, data_type)
  def client_update(shared, personal, dataset):
    model, metrics, shared_vars, personal_vars = local_training.model_parts(
        model_fn, loss_fn, metrics_fn)
    loss = loss_fn()
    joint = (local_training.shared_trainable(shared_vars, client_optimizer)
             + local_training.personal_trainable(personal_vars, personal_optimizer, personal_l2))

    @tf.function
    def local_update(shared, personal, dataset):
      local_training.assign(shared_vars, shared)
      local_training.assign(personal_vars, personal)
      initial_shared = tf.nest.map_structure(tf.identity, shared.trainable)
      num_examples = local_training.local_sgd(
          model, loss, joint, local_training.phase_dataset(dataset, tau_u, local_unit),
          metrics=metrics)
      return local_training.client_output(initial_shared, shared_vars, personal_vars,
                                          num_examples, metrics)

    return local_update(shared, personal, dataset)

  return client_update


def build_fedsim_process(
    model_fn, *, loss_fn, metrics_fn=None, client_optimizer,
    personal_optimizer: Optional[tff.learning.optimizers.Optimizer] = None,
    server_optimizer=None, tau_u: int = 1, local_unit: str = 'epochs',
    personal_l2: float = 0.0, model_aggregator=None, distributor=None,
    metrics_aggregator=None, client_weighting=defaults.NUM_EXAMPLES,
    evaluation_loss_fn=None) -> defaults.PersonalizedProcess:
  """FedSim (Pillutla et al., ICML 2022, Algorithm 1, simultaneous): `tau_u`
  passes in which u and v_i step together on one gradient per batch."""
  shared_type, personal_type, data_type = defaults.process_types(model_fn, 'fedsim')
  update = build_fedsim_client_update(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, shared_type=shared_type,
      personal_type=personal_type, data_type=data_type, client_optimizer=client_optimizer,
      personal_optimizer=personal_optimizer or client_optimizer, tau_u=tau_u,
      local_unit=local_unit, personal_l2=personal_l2)
  return defaults.compose_with_defaults(
      model_fn, update, loss_fn=loss_fn, metrics_fn=metrics_fn,
      server_optimizer=server_optimizer, model_aggregator=model_aggregator,
      distributor=distributor, metrics_aggregator=metrics_aggregator,
      client_weighting=client_weighting, evaluation_loss_fn=evaluation_loss_fn)


build_fedsim_process.__doc__ += defaults.PARTS_DOC
