"""The evaluation computations: per-client metrics of (u, v_i) and the
finetuning of v before testing.

Pillutla et al., ICML 2022, Sec. 5: every client is tested with its own v_i,
optionally after finetuning v_i on its train split with u frozen
(`build_personal_finetuning`); the comparison and the report are `reports`
and `protocol`.
"""

from typing import Callable, Optional

import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.models import partition
from partial_personalization.templates import composers
from partial_personalization.templates import local_training


def build_client_evaluation(
    *,
    model_fn: partition.ModelFn,
    loss_fn: Callable[[], tf.keras.losses.Loss],
    metrics_fn: Optional[Callable[[], list[tf.keras.metrics.Metric]]],
    shared_type: tff.types.Type,
    personal_type: tff.types.Type,
    data_type: tff.types.Type,
    whole_model: bool = False,
) -> tff.Computation:
  """Builds `(u, v_i, dataset) -> unfinalized metrics` (no training).

  The result maps each metric name (the task's metrics and `loss`) to the list
  of its Keras variable values; for mean metrics that is `[total, count]`.
  With `whole_model` (Ditto, pFedMe: v_i is a whole model of u's type), the
  model evaluated is v_i alone.
  """

  @tff.tensorflow.computation(shared_type, personal_type, data_type)
  def evaluate(shared, personal, dataset):
    model, metrics, shared_vars, personal_vars = local_training.model_parts(model_fn, loss_fn, metrics_fn)
    loss = loss_fn()

    @tf.function
    def run(shared, personal, dataset):
      if whole_model:
        local_training.assign(shared_vars, personal)
      else:
        local_training.assign(shared_vars, shared)
        local_training.assign(personal_vars, personal)
      for batch in local_training.batches_after(dataset):
        output = model.forward_pass(batch, training=False)
        local_training.record_metrics(metrics, output, loss(output.labels, output.predictions))
      return local_training.read_metrics(metrics)

    return run(shared, personal, dataset)

  return evaluate


def build_personalized_evaluation(
    model_fn: partition.ModelFn,
    *,
    loss_fn: Callable[[], tf.keras.losses.Loss],
    metrics_fn: Optional[Callable[[], list[tf.keras.metrics.Metric]]] = None,
    whole_model: bool = False,
) -> tff.Computation:
  """Per-client evaluation: (u@SERVER, v@CLIENTS, data@CLIENTS) -> metrics@CLIENTS.

  Each client evaluates the model (u, v_i) on its data, without training; the
  result is one OrderedDict of unfinalized metrics per client (name -> [total,
  count] for mean metrics, `loss` included), in client order. A
  non-personalized model is evaluated by giving every client the same v. With
  `whole_model` (Ditto, pFedMe) v_i is a whole model of u's type and is
  evaluated alone.
  """
  shared_type, personal_type, data_type = composers.model_types(model_fn)
  if whole_model:
    personal_type = shared_type
  client_eval = build_client_evaluation(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn,
      shared_type=shared_type, personal_type=personal_type, data_type=data_type,
      whole_model=whole_model)

  return on_each_client(client_eval)


def build_personal_finetuning(
    model_fn: partition.ModelFn,
    *,
    loss_fn: Callable[[], tf.keras.losses.Loss],
    optimizer: tff.learning.optimizers.Optimizer,
    tau_v: int,
    local_unit: str = 'epochs',
    personal_l2: float = 0.0,
) -> tff.Computation:
  """Finetunes v on each client: (u@SERVER, v@CLIENTS, data@CLIENTS) -> v'@CLIENTS.

  The evaluation protocol of Pillutla et al. (Sec. 5, "finetuning"): `tau_v`
  epochs (or steps) of local training of the personal part with u frozen, on
  the client's train split, before testing: FedAlt's v pass alone. From v_0 it
  is the reconstruction step of stateless clients (Federated Reconstruction,
  Singhal et al. 2021); with the `full` partition (every variable personal) it
  is local finetuning of the whole model. Raises ValueError for an unknown
  `local_unit` or `tau_v` < 0.
  """
  local_training.check_local_unit(local_unit)
  if tau_v < 0:
    raise ValueError(f'tau_v must be >= 0, got {tau_v}')
  shared_type, personal_type, data_type = composers.model_types(model_fn)

  @tff.tensorflow.computation(shared_type, personal_type, data_type)
  def finetune_client(shared, personal, dataset):
    model, _, shared_vars, personal_vars = local_training.model_parts(model_fn, loss_fn, None)
    loss = loss_fn()

    @tf.function
    def run(shared, personal, dataset):
      local_training.assign(shared_vars, shared)
      local_training.assign(personal_vars, personal)
      if personal_vars.trainable and tau_v > 0:
        local_training.local_sgd(
            model, loss, local_training.personal_trainable(personal_vars, optimizer, personal_l2),
            local_training.phase_dataset(dataset, tau_v, local_unit))
      return local_training.read_weights(personal_vars)

    return run(shared, personal, dataset)

  return on_each_client(finetune_client)


def on_each_client(client_computation: tff.Computation) -> tff.Computation:
  """`(u@SERVER, v@CLIENTS, data@CLIENTS) -> result@CLIENTS` of a client
  computation `(u, v_i, data_i) -> result`: u broadcast, then mapped."""
  parameter = client_computation.type_signature.parameter

  @tff.federated_computation(
      tff.FederatedType(parameter[0], tff.SERVER),
      tff.FederatedType(parameter[1], tff.CLIENTS),
      tff.FederatedType(parameter[2], tff.CLIENTS),
  )
  def on_clients(shared, personal_weights, client_data):
    return tff.federated_map(
        client_computation, (tff.federated_broadcast(shared), personal_weights, client_data))

  return on_clients
