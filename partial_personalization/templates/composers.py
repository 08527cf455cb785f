"""One composer for every personalized process: TFF parts around a client update.

Like TFF's `learning/templates/composers.py`, the process is put together from
parts, each checked against the others' types when composed:
  initial_shared_weights   ( -> u)                         TF computation
  distributor              u@SERVER -> u@CLIENTS           DistributionProcess
  client_update            (u, v_i, data) -> ClientOutput  TF computation
  aggregator               shared_update@CLIENTS -> @SERVER AggregationProcess
  finalizer                (u, aggregate) -> u'            FinalizerProcess
  metrics_aggregation      metrics@CLIENTS -> @SERVER      federated computation
What differs between FedAlt, FedSim, FFGG, Ditto and pFedMe is only the client
update (`client_work.ClientOutput` is the contract); the builders of
`algorithms` make it and the default parts (`algorithms.defaults`).

The state is TFF's `LearningAlgorithmState`, SERVER-placed:
`global_model_weights` holds u (a `ModelWeights`). Signatures (v and data
CLIENTS-placed, in the same client order):
  initialize: ( -> state@SERVER)
  next: (state@SERVER, v@CLIENTS, data@CLIENTS)
        -> (state@SERVER, v'@CLIENTS, metrics@SERVER)
"""

import collections

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

ModelWeights = tff.learning.models.ModelWeights


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

  `next` is `client_step` then `server_step`, also available apart:
    client_step: (state@SERVER, v@CLIENTS, data@CLIENTS) -> ClientOutput@CLIENTS
    server_step: (state@SERVER, outputs@CLIENTS) -> (state@SERVER, metrics@SERVER)
  Executors that split a computation at its aggregation (`remote_context`)
  call them apart, so the client work is not run twice. A Python call of
  `client_step` returns a list of `client_work.ClientOutput`, one per client.
  """

  def __init__(self, initialize_fn, next_fn, *, client_step, server_step, evaluate,
               shared_type, personal_type):
    super().__init__(initialize_fn, next_fn)
    self.client_step = client_step
    self.server_step = server_step
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


def _check_type(part: str, expected, actual, what: str) -> None:
  if not expected.is_assignable_from(actual):
    raise TypeError(f'{part} does not fit the client update: it {what} {actual}, '
                    f'the client update has {expected}.')


def _is_empty(type_spec) -> bool:
  member = getattr(type_spec, 'member', type_spec)
  return isinstance(member, tff.StructType) and not member


def compose_personalized_process(
    *,
    initial_shared_weights: tff.Computation,
    client_update: tff.Computation,
    evaluate: tff.Computation,
    distributor: tff.learning.templates.DistributionProcess,
    aggregator: tff.templates.AggregationProcess,
    finalizer: tff.learning.templates.FinalizerProcess,
    metrics_aggregation: tff.Computation,
    client_weighting: tff.learning.ClientWeighting,
) -> PersonalizedProcess:
  """Composes a `PersonalizedProcess` (Pillutla et al., ICML 2022, Algorithm 1).

  Args:
    initial_shared_weights: No-argument TF computation returning u_0, a
      `ModelWeights`.
    client_update: TF computation `(u, v_i, data) -> client_work.ClientOutput`.
    evaluate: Federated `(u@SERVER, v@CLIENTS, data@CLIENTS) -> metrics@CLIENTS`.
    distributor: Sends u to the clients. Its state and measurements must be
      empty (`build_broadcast_process`, or a stateless transform of it): the
      split `client_step`/`server_step` would otherwise lose them.
    aggregator: A weighted `AggregationProcess` of the `shared_update`s.
    finalizer: Applies the aggregate to u (`build_apply_optimizer_finalizer`).
    metrics_aggregation: Federated computation from the clients' unfinalized
      metrics (`ClientOutput.metrics`) to SERVER metrics
      (`tff.learning.metrics.sum_then_finalize(...)`).
    client_weighting: NUM_EXAMPLES (each update weighs `update_weight`) or
      UNIFORM (each weighs 1: the (1/m) sum_i of Algorithm 1).

  Returns:
    A `PersonalizedProcess` (see the module docstring for its signatures).

  Raises:
    TypeError: a part whose types do not fit the client update's, a
      distributor with state or measurements, an unweighted aggregator.
    ValueError: an unknown `client_weighting`.
  """
  if client_weighting not in (tff.learning.ClientWeighting.NUM_EXAMPLES,
                              tff.learning.ClientWeighting.UNIFORM):
    raise ValueError(f'client_weighting must be NUM_EXAMPLES or UNIFORM, got {client_weighting!r}')
  uniform = client_weighting == tff.learning.ClientWeighting.UNIFORM
  shared_type, personal_type, data_type = client_update.type_signature.parameter
  result_type = client_update.type_signature.result
  if not (_is_empty(distributor.initialize.type_signature.result)
          and _is_empty(distributor.next.type_signature.result.measurements)):
    raise TypeError('the distributor must have no state and no measurements (see '
                    'compose_personalized_process), got '
                    f'{distributor.next.type_signature}.')
  _check_type('distributor', shared_type,
              distributor.next.type_signature.result.result.member, 'sends')
  if not aggregator.is_weighted:
    raise TypeError('the aggregator must be weighted (a WeightedAggregationFactory\'s '
                    'process); wrap an unweighted one or use tff.aggregators.MeanFactory.')
  _check_type('aggregator', result_type.shared_update,
              aggregator.next.type_signature.parameter[1].member, 'aggregates')
  _check_type('finalizer', result_type.shared_update,
              finalizer.next.type_signature.parameter[2].member, 'applies')
  if hasattr(metrics_aggregation, 'type_signature'):  # Else polymorphic: checked when traced.
    _check_type('metrics_aggregation', result_type.metrics,
                metrics_aggregation.type_signature.parameter.member, 'takes')

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
  _check_type('initial_shared_weights', shared_type,
              state_type.member.global_model_weights, 'returns')
  personal_at_clients = tff.FederatedType(personal_type, tff.CLIENTS)
  data_at_clients = tff.FederatedType(data_type, tff.CLIENTS)

  @tff.federated_computation(state_type, personal_at_clients, data_at_clients)
  def client_step(state, personal_weights, client_data):
    # The distributor has no state and no measurements (checked above), so
    # `server_step` needs neither.
    broadcast = distributor.next(state.distributor, state.global_model_weights)
    return tff.federated_map(
        client_update, (broadcast.result, personal_weights, client_data))

  @tff.federated_computation(state_type, tff.FederatedType(result_type, tff.CLIENTS))
  def server_step(state, outputs):
    weights = outputs.update_weight
    if uniform:  # Every update counts 1 (a lambda: TFF rejects ones_like's defaults).
      weights = tff.federated_map(
          tff.tensorflow.computation(lambda w: tf.ones_like(w), np.float32), weights)
    aggregated = aggregator.next(state.aggregator, outputs.shared_update, weights)
    finalized = finalizer.next(
        state.finalizer, state.global_model_weights, aggregated.result)
    new_state = tff.federated_zip(
        tff.learning.templates.LearningAlgorithmState(
            global_model_weights=finalized.result,
            distributor=state.distributor,
            client_work=state.client_work,
            aggregator=aggregated.state,
            finalizer=finalized.state,
        )
    )
    measurements = tff.federated_zip(
        collections.OrderedDict(
            distributor=tff.federated_value((), tff.SERVER),
            client_work=metrics_aggregation(outputs.metrics),
            aggregator=aggregated.measurements,
            finalizer=finalized.measurements,
        )
    )
    return new_state, measurements

  @tff.federated_computation(state_type, personal_at_clients, data_at_clients)
  def next_fn(state, personal_weights, client_data):
    outputs = client_step(state, personal_weights, client_data)
    new_state, measurements = server_step(state, outputs)
    return new_state, outputs.personal_weights, measurements

  return PersonalizedProcess(
      initialize_fn, next_fn, client_step=client_step, server_step=server_step,
      evaluate=evaluate, shared_type=shared_type, personal_type=personal_type)
