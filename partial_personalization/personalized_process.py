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
from partial_personalization import ffgg
from partial_personalization import full_personalization

ModelWeights = tff.learning.models.ModelWeights
# ffgg: Mishchenko et al., TMLR 2025 (see `ffgg`).
PARTIAL_ALGORITHMS = ('fedalt', 'fedsim', 'ffgg')
# Full personalization: v_i is a whole model beside the global u.
FULL_ALGORITHMS = ('ditto', 'pfedme')
ALGORITHMS = PARTIAL_ALGORITHMS + FULL_ALGORITHMS


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
    client_step: (state@SERVER, v@CLIENTS, data@CLIENTS) -> outputs@CLIENTS
      (per client: shared_update, update_weight, personal_weights, metrics)
    server_step: (state@SERVER, outputs@CLIENTS) -> (state@SERVER, metrics@SERVER)
  Executors that split a computation at its aggregation (`remote_context`)
  call them apart, so the client work is not run twice.
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
    personal_l2: float = 0.0,
    prox_strength: float = 0.1,
    inner_steps: int = 5,
    local_steps: int = 1,
    model_aggregator: Optional[tff.aggregators.WeightedAggregationFactory] = None,
    client_weighting: tff.learning.ClientWeighting = tff.learning.ClientWeighting.NUM_EXAMPLES,
    evaluation_loss_fn: Optional[Callable[[], tf.keras.losses.Loss]] = None,
) -> PersonalizedProcess:
  """Builds FedAlt, FedSim, FFGG, or the full-personalization Ditto and pFedMe.

  Args:
    model_fn: No-arg function returning a `tff.learning.models.ReconstructionModel`
      whose global variables are the shared part u and local variables the
      personal part v (see `partition.build_reconstruction_model`). For
      'ditto' and 'pfedme' all variables are global (the `none` partition) and
      v_i is a second whole model of the same type.
    loss_fn: No-arg function returning a Keras loss (y_true, logits) -> scalar.
    metrics_fn: No-arg function returning Keras metrics, reported per round.
    algorithm: 'fedalt', 'fedsim' (Pillutla et al., Algorithm 1), 'ffgg'
      (Mishchenko et al., Algorithms 1, 2, 4: `tau_v` full-batch fine-tuning
      steps, then the gradient of u; the server steps with `server_optimizer`),
      'ditto' or 'pfedme' (see `full_personalization`).
    client_optimizer: Local optimizer of u.
    personal_optimizer: Local optimizer of v; defaults to `client_optimizer`.
    server_optimizer: Applies the mean update of u; defaults to SGD with
      learning rate 1.0 (plain averaging of local models, as FedAvg).
    tau_u, tau_v: Local epochs (or steps, see `local_unit`) on u and on v.
    local_unit: 'epochs' or 'steps'.
    personal_l2: Weight decay of v in FedAlt/FedSim personal steps.
    prox_strength: lambda of Ditto and pFedMe.
    inner_steps: pFedMe's inner steps K per batch.
    local_steps: FFGG's full-batch steps on u (1: FFGG, > 1: Local FFGG).
    model_aggregator: Weighted aggregation factory for u updates; defaults to
      `tff.aggregators.MeanFactory()` (example-weighted mean); see
      `robust_aggregators` for Byzantine-robust ones.
    client_weighting: TFF's `ClientWeighting` of the u updates: NUM_EXAMPLES
      (each client's examples, as FedAvg) or UNIFORM (1 per client: the
      (1/m) sum_i of Pillutla et al. Algorithm 1 and Mishchenko et al.
      Algorithm 1).
    evaluation_loss_fn: The loss of `evaluate` (no gradient taken), e.g. a
      cheaper form of the same loss; defaults to `loss_fn`.

  Returns:
    A `PersonalizedProcess`.

  Raises:
    ValueError: unknown `algorithm`, `local_unit` or `client_weighting`, a model with no shared
      trainable variable (nothing to federate), or Ditto/pFedMe with personal
      variables in the model.
  """
  if algorithm not in ALGORITHMS:
    raise ValueError(f'algorithm must be one of {ALGORITHMS}, got {algorithm!r}')
  full = algorithm in FULL_ALGORITHMS
  personal_optimizer = personal_optimizer or client_optimizer
  server_optimizer = server_optimizer or tff.learning.optimizers.build_sgdm(1.0)
  model_aggregator = model_aggregator or tff.aggregators.MeanFactory()
  if client_weighting not in (tff.learning.ClientWeighting.NUM_EXAMPLES,
                              tff.learning.ClientWeighting.UNIFORM):
    raise ValueError(f'client_weighting must be NUM_EXAMPLES or UNIFORM, got {client_weighting!r}')
  uniform = client_weighting == tff.learning.ClientWeighting.UNIFORM

  shared_type, personal_type, data_type = model_types(model_fn)
  if not shared_type.trainable:
    raise ValueError(
        'the model has no shared trainable variables (full personalization): '
        'there is nothing to federate; train each client locally instead.'
    )
  common = dict(model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn,
                data_type=data_type, client_optimizer=client_optimizer,
                personal_optimizer=personal_optimizer, tau_u=tau_u,
                local_unit=local_unit)
  if full:
    if personal_type.trainable or personal_type.non_trainable:
      raise ValueError(
          f'{algorithm} personalizes the whole model: build it with the `none` '
          'partition (v_i is a full copy of the model).')
    personal_type = shared_type
  if algorithm == 'ditto':
    client_update = full_personalization.build_ditto_client_update(
        **common, weights_type=shared_type, prox_strength=prox_strength, tau_v=tau_v)
  elif algorithm == 'pfedme':
    client_update = full_personalization.build_pfedme_client_update(
        **common, weights_type=shared_type, prox_strength=prox_strength,
        inner_steps=inner_steps)
  elif algorithm == 'ffgg':
    client_update = ffgg.build_ffgg_client_update(
        model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, shared_type=shared_type,
        personal_type=personal_type, data_type=data_type, client_optimizer=client_optimizer,
        personal_optimizer=personal_optimizer, tau_v=tau_v, local_steps=local_steps)
  else:
    client_update = client_work.build_client_update(
        **common, shared_type=shared_type, personal_type=personal_type,
        alternating=(algorithm == 'fedalt'), tau_v=tau_v, personal_l2=personal_l2)

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

  personal_at_clients = tff.FederatedType(personal_type, tff.CLIENTS)
  data_at_clients = tff.FederatedType(data_type, tff.CLIENTS)

  @tff.federated_computation(state_type, personal_at_clients, data_at_clients)
  def client_step(state, personal_weights, client_data):
    # The broadcast process of `build_broadcast_process` is stateless and
    # measures nothing, so `server_step` needs neither.
    broadcast = distributor.next(state.distributor, state.global_model_weights)
    return tff.federated_map(
        client_update, (broadcast.result, personal_weights, client_data))

  @tff.federated_computation(
      state_type, tff.FederatedType(client_update.type_signature.result, tff.CLIENTS))
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
      evaluate=build_personalized_evaluation(
          model_fn, loss_fn=evaluation_loss_fn or loss_fn, metrics_fn=metrics_fn,
          personal_replaces_shared=full),
      shared_type=shared_type, personal_type=personal_type)


# One builder per algorithm, each taking only its own hyperparameters
# (keyword-only: one that does not apply is a TypeError, not ignored), over
# `build_personalized_process`; arguments as there.
def build_fedalt_process(model_fn, *, loss_fn, metrics_fn=None, client_optimizer,
                         personal_optimizer=None, server_optimizer=None, tau_u: int = 1,
                         tau_v: int = 1, local_unit: str = 'epochs', personal_l2: float = 0.0,
                         model_aggregator=None,
                         client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
                         evaluation_loss_fn=None) -> PersonalizedProcess:
  """FedAlt (Pillutla et al., ICML 2022, Algorithm 1, alternating): `tau_v`
  passes on v_i with u fixed, then `tau_u` passes on u with the new v_i."""
  return build_personalized_process(
      model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, algorithm='fedalt',
      client_optimizer=client_optimizer, personal_optimizer=personal_optimizer,
      server_optimizer=server_optimizer, tau_u=tau_u, tau_v=tau_v, local_unit=local_unit,
      personal_l2=personal_l2, model_aggregator=model_aggregator,
      client_weighting=client_weighting, evaluation_loss_fn=evaluation_loss_fn)


def build_fedsim_process(model_fn, *, loss_fn, metrics_fn=None, client_optimizer,
                         personal_optimizer=None, server_optimizer=None, tau: int = 1,
                         local_unit: str = 'epochs', personal_l2: float = 0.0,
                         model_aggregator=None,
                         client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
                         evaluation_loss_fn=None) -> PersonalizedProcess:
  """FedSim (Pillutla et al., Algorithm 1, simultaneous): `tau` passes in which
  u and v_i step together on one gradient per batch."""
  return build_personalized_process(
      model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, algorithm='fedsim',
      client_optimizer=client_optimizer, personal_optimizer=personal_optimizer,
      server_optimizer=server_optimizer, tau_u=tau, local_unit=local_unit,
      personal_l2=personal_l2, model_aggregator=model_aggregator,
      client_weighting=client_weighting, evaluation_loss_fn=evaluation_loss_fn)


def build_ffgg_process(model_fn, *, loss_fn, metrics_fn=None, client_optimizer,
                       personal_optimizer=None, server_optimizer, finetune_steps: int = 1,
                       local_steps: int = 1, model_aggregator=None,
                       client_weighting=tff.learning.ClientWeighting.UNIFORM,
                       evaluation_loss_fn=None) -> PersonalizedProcess:
  """FFGG (Mishchenko et al., TMLR 2025, Algorithms 1, 2, 4): `finetune_steps`
  full-batch steps on v_i, then the gradient of u (`local_steps` > 1: Local
  FFGG); the server steps with `server_optimizer` (SGD at gamma). Clients are
  averaged uniformly by default, as the paper's (1/n) sum."""
  return build_personalized_process(
      model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, algorithm='ffgg',
      client_optimizer=client_optimizer, personal_optimizer=personal_optimizer,
      server_optimizer=server_optimizer, tau_v=finetune_steps, local_steps=local_steps,
      model_aggregator=model_aggregator, client_weighting=client_weighting,
      evaluation_loss_fn=evaluation_loss_fn)


def build_ditto_process(model_fn, *, loss_fn, metrics_fn=None, client_optimizer,
                        personal_optimizer=None, server_optimizer=None,
                        prox_strength: float = 0.1, tau_u: int = 1, tau_v: int = 1,
                        local_unit: str = 'epochs', model_aggregator=None,
                        client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
                        evaluation_loss_fn=None) -> PersonalizedProcess:
  """Ditto (Li et al., ICML 2021): FedAvg on the global model and, per client,
  a whole personal model pulled toward it with `prox_strength`; `model_fn`
  has no personal variables (the `none` partition)."""
  return build_personalized_process(
      model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, algorithm='ditto',
      client_optimizer=client_optimizer, personal_optimizer=personal_optimizer,
      server_optimizer=server_optimizer, tau_u=tau_u, tau_v=tau_v, local_unit=local_unit,
      prox_strength=prox_strength, model_aggregator=model_aggregator,
      client_weighting=client_weighting, evaluation_loss_fn=evaluation_loss_fn)


def build_pfedme_process(model_fn, *, loss_fn, metrics_fn=None, client_optimizer,
                         personal_optimizer=None, server_optimizer=None,
                         prox_strength: float = 1.0, inner_steps: int = 5, tau_u: int = 1,
                         local_unit: str = 'epochs', model_aggregator=None,
                         client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
                         evaluation_loss_fn=None) -> PersonalizedProcess:
  """pFedMe (T. Dinh et al., NeurIPS 2020): per batch, `inner_steps` steps of
  the Moreau-envelope problem with `prox_strength`, then the local global model
  moves toward it; `model_fn` has no personal variables."""
  return build_personalized_process(
      model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, algorithm='pfedme',
      client_optimizer=client_optimizer, personal_optimizer=personal_optimizer,
      server_optimizer=server_optimizer, tau_u=tau_u, local_unit=local_unit,
      prox_strength=prox_strength, inner_steps=inner_steps,
      model_aggregator=model_aggregator, client_weighting=client_weighting,
      evaluation_loss_fn=evaluation_loss_fn)


# Algorithm name -> its builder: the one list of algorithms.
BUILDERS = {'fedalt': build_fedalt_process, 'fedsim': build_fedsim_process,
            'ffgg': build_ffgg_process, 'ditto': build_ditto_process,
            'pfedme': build_pfedme_process}
assert tuple(BUILDERS) == ALGORITHMS


def build_personalized_evaluation(
    model_fn: Callable[[], tff.learning.models.ReconstructionModel],
    *,
    loss_fn: Callable[[], tf.keras.losses.Loss],
    metrics_fn: Optional[Callable[[], list[tf.keras.metrics.Metric]]] = None,
    personal_replaces_shared: bool = False,
) -> tff.Computation:
  """Per-client evaluation: (u@SERVER, v@CLIENTS, data@CLIENTS) -> metrics@CLIENTS.

  Each client evaluates the model (u, v_i) on its data, without training; the
  result is one OrderedDict of unfinalized metrics per client (name -> [total,
  count] for mean metrics, `loss` included), in client order. A
  non-personalized model is evaluated by giving every client the same v. With
  `personal_replaces_shared` (Ditto, pFedMe) v_i is a whole model of u's type
  and is evaluated alone.
  """
  shared_type, personal_type, data_type = model_types(model_fn)
  if personal_replaces_shared:
    personal_type = shared_type
  client_eval = client_work.build_client_evaluation(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn,
      shared_type=shared_type, personal_type=personal_type, data_type=data_type,
      personal_replaces_shared=personal_replaces_shared)

  @tff.federated_computation(
      tff.FederatedType(shared_type, tff.SERVER),
      tff.FederatedType(personal_type, tff.CLIENTS),
      tff.FederatedType(data_type, tff.CLIENTS),
  )
  def evaluate(shared, personal_weights, client_data):
    return tff.federated_map(
        client_eval, (tff.federated_broadcast(shared), personal_weights, client_data))

  return evaluate


def build_personal_finetuning(
    model_fn: Callable[[], tff.learning.models.ReconstructionModel],
    *,
    loss_fn: Callable[[], tf.keras.losses.Loss],
    optimizer: tff.learning.optimizers.Optimizer,
    tau: int,
    local_unit: str = 'epochs',
    personal_l2: float = 0.0,
) -> tff.Computation:
  """Finetunes v on each client: (u@SERVER, v@CLIENTS, data@CLIENTS) -> v'@CLIENTS.

  The evaluation protocol of Pillutla et al. (Sec. 5, "finetuning"): `tau`
  epochs (or steps) of local training of the personal part with u frozen, on
  the client's train split, before testing. From v_0 it is the reconstruction
  step of stateless clients (Federated Reconstruction, Singhal et al. 2021);
  with the `full` partition it is local finetuning of the whole model. It is
  FedAlt's client update with no u pass.
  """
  shared_type, personal_type, data_type = model_types(model_fn)
  update = client_work.build_client_update(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=None,
      shared_type=shared_type, personal_type=personal_type, data_type=data_type,
      alternating=True, client_optimizer=optimizer, personal_optimizer=optimizer,
      tau_u=0, tau_v=tau, local_unit=local_unit, personal_l2=personal_l2)

  @tff.federated_computation(
      tff.FederatedType(shared_type, tff.SERVER),
      tff.FederatedType(personal_type, tff.CLIENTS),
      tff.FederatedType(data_type, tff.CLIENTS),
  )
  def finetune(shared, personal_weights, client_data):
    outputs = tff.federated_map(
        update, (tff.federated_broadcast(shared), personal_weights, client_data))
    return outputs.personal_weights

  return finetune
