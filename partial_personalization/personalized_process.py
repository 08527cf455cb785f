"""FedAlt and FedSim as TFF iterative processes with client-resident personal state.

Pillutla et al., "Federated Learning with Partial Model Personalization", ICML
2022, Algorithm 1. Objective: min over u, v_1..v_n of (1/n) sum_i F_i(u, v_i).
Each round the server broadcasts u to the sampled clients; each client runs its
local update (`client_work`) from (u, v_i); only the updates of u are
aggregated (example-weighted mean through `tff.aggregators` by default) and
applied by a server optimizer; the new v_i go back to the client.

The process is composed, like TFF's `build_weighted_fed_avg`, from TFF parts:
`build_broadcast_process` (distributor), the client work below, an aggregation
factory, `build_apply_optimizer_finalizer` (server update) and
`sum_then_finalize` (metrics). Its state is TFF's `LearningAlgorithmState`,
SERVER-placed: `global_model_weights` holds u (a `ModelWeights`).

Signatures (v and data CLIENTS-placed, in the same client order):
  initialize: ( -> state@SERVER)
  next: (state@SERVER, v@CLIENTS, data@CLIENTS)
        -> (state@SERVER, v'@CLIENTS, metrics@SERVER)
A Python call of `next` with lists of v_i and datasets returns a list of new
v_i in the same order. Persisting v_i between rounds is the caller's job
(`client_state.ClientStateStore`); Federated Reconstruction
(`tff.learning.algorithms.build_fed_recon`) is the stateless counterpart.
"""

import collections
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import client_work

ModelWeights = tff.learning.models.ModelWeights
ALGORITHMS = ('fedalt', 'fedsim')


def _weights_type(variables_trainable, variables_non_trainable):
  def spec(v):
    return tff.TensorType(v.dtype.as_numpy_dtype, v.shape)

  return tff.types.to_type(
      ModelWeights(
          trainable=[spec(v) for v in variables_trainable],
          non_trainable=[spec(v) for v in variables_non_trainable],
      )
  )


def model_types(model_fn):
  """Returns (shared u type, personal v type, client data type) of a model."""
  with tf.Graph().as_default():
    model = model_fn()
    shared = _weights_type(model.global_trainable_variables, model.global_non_trainable_variables)
    personal = _weights_type(model.local_trainable_variables, model.local_non_trainable_variables)
    data = tff.SequenceType(tff.types.tensorflow_to_type(model.input_spec))
  return shared, personal, data


class PersonalizedProcess(tff.templates.IterativeProcess):
  """An `IterativeProcess` whose `next` also maps CLIENTS-placed personal weights.

  Extra attributes: `evaluate` (federated: u@SERVER, v@CLIENTS, data@CLIENTS ->
  unfinalized metrics@CLIENTS, one entry per client), `shared_type`,
  `personal_type`, and `get_model_weights(state)` returning u.
  """

  def __init__(self, initialize_fn, next_fn, *, evaluate, shared_type, personal_type):
    super().__init__(initialize_fn, next_fn)
    self.evaluate = evaluate
    self.shared_type = shared_type
    self.personal_type = personal_type

  @staticmethod
  def get_model_weights(state) -> ModelWeights:
    return state.global_model_weights

  @staticmethod
  def set_model_weights(state, shared: ModelWeights):
    """Returns `state` with u replaced (e.g. to start from a FedAvg model)."""
    return tff.learning.templates.LearningAlgorithmState(
        global_model_weights=shared,
        distributor=state.distributor,
        client_work=state.client_work,
        aggregator=state.aggregator,
        finalizer=state.finalizer,
    )


def build_personalized_process(
    model_fn: Callable[[], tff.learning.models.ReconstructionModel],
    *,
    loss_fn: Callable[[], tf.keras.losses.Loss],
    metrics_fn: Optional[Callable[[], list[tf.keras.metrics.Metric]]] = None,
    algorithm: str = 'fedalt',
    client_optimizer: tff.learning.optimizers.Optimizer,
    personal_optimizer: Optional[tff.learning.optimizers.Optimizer] = None,
    server_optimizer: Optional[tff.learning.optimizers.Optimizer] = None,
    tau_u: int = 1,
    tau_v: int = 1,
    local_unit: str = 'epochs',
    model_aggregator: Optional[tff.aggregators.WeightedAggregationFactory] = None,
) -> PersonalizedProcess:
  """Builds FedAlt (`algorithm='fedalt'`) or FedSim (`'fedsim'`).

  Args:
    model_fn: No-arg function returning a `tff.learning.models.ReconstructionModel`
      whose global variables are the shared part u and local variables the
      personal part v (see `partition.build_reconstruction_model`).
    loss_fn: No-arg function returning a Keras loss (y_true, logits) -> scalar.
    metrics_fn: No-arg function returning Keras metrics, reported per round.
    algorithm: 'fedalt' or 'fedsim'.
    client_optimizer: Local optimizer of u.
    personal_optimizer: Local optimizer of v; defaults to `client_optimizer`.
    server_optimizer: Applies the mean update of u; defaults to SGD with
      learning rate 1.0 (plain averaging of local models, as FedAvg).
    tau_u, tau_v: Local epochs (or steps, see `local_unit`) on u and on v.
    local_unit: 'epochs' or 'steps'.
    model_aggregator: Weighted aggregation factory for u updates; defaults to
      `tff.aggregators.MeanFactory()` (example-weighted mean).

  Returns:
    A `PersonalizedProcess`.

  Raises:
    ValueError: unknown `algorithm` or `local_unit`, or a model with no shared
      trainable variable (full personalization has nothing to federate).
  """
  if algorithm not in ALGORITHMS:
    raise ValueError(f'algorithm must be one of {ALGORITHMS}, got {algorithm!r}')
  personal_optimizer = personal_optimizer or client_optimizer
  server_optimizer = server_optimizer or tff.learning.optimizers.build_sgdm(1.0)
  model_aggregator = model_aggregator or tff.aggregators.MeanFactory()

  shared_type, personal_type, data_type = model_types(model_fn)
  if not shared_type.trainable:
    raise ValueError(
        'the model has no shared trainable variables (full personalization): '
        'there is nothing to federate; train each client locally instead.'
    )
  common = dict(model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn,
                shared_type=shared_type, personal_type=personal_type,
                data_type=data_type)
  client_update = client_work.build_client_update(
      **common,
      alternating=(algorithm == 'fedalt'),
      client_optimizer=client_optimizer,
      personal_optimizer=personal_optimizer,
      tau_u=tau_u, tau_v=tau_v, local_unit=local_unit,
  )

  distributor = tff.learning.templates.build_broadcast_process(shared_type)
  aggregator = model_aggregator.create(
      shared_type.trainable, tff.TensorType(np.float32))
  finalizer = tff.learning.templates.build_apply_optimizer_finalizer(
      server_optimizer, shared_type)
  # Metric finalizers come from instances built outside any computation.
  with tf.Graph().as_default():
    metrics = client_work.build_metrics(loss_fn, metrics_fn)
    finalizers = collections.OrderedDict(
        (m.name, tff.learning.metrics.create_keras_metric_finalizer(m))
        for m in metrics)
  metrics_aggregation = tff.learning.metrics.sum_then_finalize(
      finalizers, client_update.type_signature.result['metrics'])

  @tff.tensorflow.computation
  def initial_shared_weights():
    model = model_fn()
    return ModelWeights(list(model.global_trainable_variables),
                        list(model.global_non_trainable_variables))

  @tff.federated_computation
  def initialize_fn():
    return tff.federated_zip(
        tff.learning.templates.LearningAlgorithmState(
            global_model_weights=tff.federated_eval(initial_shared_weights, tff.SERVER),
            distributor=distributor.initialize(),
            client_work=tff.federated_value((), tff.SERVER),
            aggregator=aggregator.initialize(),
            finalizer=finalizer.initialize(),
        )
    )

  state_type = initialize_fn.type_signature.result

  @tff.federated_computation(
      state_type,
      tff.FederatedType(personal_type, tff.CLIENTS),
      tff.FederatedType(data_type, tff.CLIENTS),
  )
  def next_fn(state, personal_weights, client_data):
    broadcast = distributor.next(state.distributor, state.global_model_weights)
    outputs = tff.federated_map(
        client_update, (broadcast.result, personal_weights, client_data))
    aggregated = aggregator.next(
        state.aggregator, outputs.shared_update, outputs.update_weight)
    finalized = finalizer.next(
        state.finalizer, state.global_model_weights, aggregated.result)
    new_state = tff.federated_zip(
        tff.learning.templates.LearningAlgorithmState(
            global_model_weights=finalized.result,
            distributor=broadcast.state,
            client_work=state.client_work,
            aggregator=aggregated.state,
            finalizer=finalized.state,
        )
    )
    measurements = tff.federated_zip(
        collections.OrderedDict(
            distributor=broadcast.measurements,
            client_work=metrics_aggregation(outputs.metrics),
            aggregator=aggregated.measurements,
            finalizer=finalized.measurements,
        )
    )
    return new_state, outputs.personal_weights, measurements

  return PersonalizedProcess(
      initialize_fn, next_fn,
      evaluate=build_personalized_evaluation(model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn),
      shared_type=shared_type, personal_type=personal_type)


def build_personalized_evaluation(
    model_fn: Callable[[], tff.learning.models.ReconstructionModel],
    *,
    loss_fn: Callable[[], tf.keras.losses.Loss],
    metrics_fn: Optional[Callable[[], list[tf.keras.metrics.Metric]]] = None,
) -> tff.Computation:
  """Per-client evaluation: (u@SERVER, v@CLIENTS, data@CLIENTS) -> metrics@CLIENTS.

  Each client evaluates the model (u, v_i) on its data, without training; the
  result is one OrderedDict of unfinalized metrics per client (name -> [total,
  count] for mean metrics, `loss` included), in client order. A
  non-personalized model is evaluated by giving every client the same v.
  """
  shared_type, personal_type, data_type = model_types(model_fn)
  client_eval = client_work.build_client_evaluation(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn,
      shared_type=shared_type, personal_type=personal_type, data_type=data_type)

  @tff.federated_computation(
      tff.FederatedType(shared_type, tff.SERVER),
      tff.FederatedType(personal_type, tff.CLIENTS),
      tff.FederatedType(data_type, tff.CLIENTS),
  )
  def evaluate(shared, personal_weights, client_data):
    return tff.federated_map(
        client_eval, (tff.federated_broadcast(shared), personal_weights, client_data))

  return evaluate
