"""One builder per algorithm: FedAlt, FedSim, FFGG, Ditto and pFedMe processes.

Pillutla et al., "Federated Learning with Partial Model Personalization", ICML
2022, Algorithm 1. Objective: min over u, v_1..v_n of (1/n) sum_i F_i(u, v_i).
Each round the server broadcasts u to the sampled clients; each client runs its
local update from (u, v_i); only the updates of u are aggregated
(example-weighted mean through `tff.aggregators` by default) and applied by a
server optimizer; the new v_i go back to the client.

Each `build_<algorithm>_process` takes only its own hyperparameters
(keyword-only: one that does not apply is a TypeError, not ignored), makes the
algorithm's client update (`client_work`, `ffgg`, `full_personalization`) and
hands it with TFF's default parts (broadcast, mean, optimizer finalizer,
sum-then-finalize metrics; each can be replaced) to
`composers.compose_personalized_process`. `BUILDERS` is the one list of
algorithm names. Persisting v_i between rounds is the caller's job
(`client_state.ClientStateStore`); Federated Reconstruction
(`tff.learning.algorithms.build_fed_recon`) is the stateless counterpart.
"""

import collections
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import client_work
from partial_personalization import composers
from partial_personalization import ffgg
from partial_personalization import full_personalization
from partial_personalization import partition

ModelWeights = tff.learning.models.ModelWeights
PersonalizedProcess = composers.PersonalizedProcess
model_types = composers.model_types
NUM_EXAMPLES = tff.learning.ClientWeighting.NUM_EXAMPLES
ModelFn = partition.ModelFn
LossFn = Callable[[], tf.keras.losses.Loss]
MetricsFn = Optional[Callable[[], list[tf.keras.metrics.Metric]]]
Optimizer = tff.learning.optimizers.Optimizer


def _types(model_fn: ModelFn, algorithm: str, full: bool = False):
  """(u type, v type, data type); v is a whole model of u's type when `full`."""
  shared_type, personal_type, data_type = model_types(model_fn)
  if not shared_type.trainable:
    raise ValueError(
        'the model has no shared trainable variables (full personalization): '
        'there is nothing to federate; train each client locally instead.')
  if full:
    if personal_type.trainable or personal_type.non_trainable:
      raise ValueError(
          f'{algorithm} personalizes the whole model: build it with the `none` '
          'partition (v_i is a full copy of the model).')
    personal_type = shared_type
  return shared_type, personal_type, data_type


def compose_with_defaults(model_fn: ModelFn, client_update: tff.Computation, *, loss_fn: LossFn,
             metrics_fn: MetricsFn, server_optimizer: Optional[Optimizer], model_aggregator,
             distributor, metrics_aggregator, client_weighting, evaluation_loss_fn,
             full: bool = False) -> PersonalizedProcess:
  """A `PersonalizedProcess` of `client_update` (TF computation `(u, v_i, data)
  -> client_work.ClientOutput`) with TFF's default parts, or the given ones.

  What every `build_<algorithm>_process` ends with; a new algorithm's builder
  does the same (docs/design.md, "How to add an algorithm"). Arguments as in
  the builders (see `_PARTS_DOC`); `full`: v_i is a whole model of u's type
  (evaluated alone).
  """
  shared_type = client_update.type_signature.parameter[0]
  server_optimizer = server_optimizer or tff.learning.optimizers.build_sgdm(1.0)
  model_aggregator = model_aggregator or tff.aggregators.MeanFactory()
  metrics_aggregator = metrics_aggregator or tff.learning.metrics.sum_then_finalize

  @tff.tensorflow.computation
  def initial_shared_weights():
    model = model_fn()
    return ModelWeights(list(model.global_trainable_variables),
                        list(model.global_non_trainable_variables))

  # Metric finalizers come from instances built outside any computation.
  with tf.Graph().as_default():
    finalizers = collections.OrderedDict(
        (m.name, tff.learning.metrics.create_keras_metric_finalizer(m))
        for m in client_work.build_metrics(loss_fn, metrics_fn))
  return composers.compose_personalized_process(
      initial_shared_weights=initial_shared_weights,
      client_update=client_update,
      evaluate=build_personalized_evaluation(
          model_fn, loss_fn=evaluation_loss_fn or loss_fn, metrics_fn=metrics_fn,
          personal_replaces_shared=full),
      distributor=distributor or tff.learning.templates.build_broadcast_process(shared_type),
      aggregator=model_aggregator.create(shared_type.trainable, tff.TensorType(np.float32)),
      finalizer=tff.learning.templates.build_apply_optimizer_finalizer(
          server_optimizer, shared_type),
      metrics_aggregation=metrics_aggregator(
          finalizers, client_update.type_signature.result.metrics),
      client_weighting=client_weighting)


_PARTS_DOC = """
  Common arguments (keyword-only but `model_fn`):
    model_fn: No-arg function returning a `partition.PersonalModel` (TFF's
      `ReconstructionModel`) whose global variables are u and local variables
      v (`partition.build_reconstruction_model`); for Ditto and pFedMe all
      variables are global (the `none` partition) and v_i is a second model.
    loss_fn: No-arg function returning a Keras loss (y_true, logits) -> scalar.
    metrics_fn: No-arg function returning Keras metrics, reported per round.
    client_optimizer: Local optimizer of u; personal_optimizer: of v
      (defaults to `client_optimizer`); both start fresh every round.
    server_optimizer: Applies the mean update of u; defaults to SGD with
      learning rate 1.0 (plain averaging of local models, as FedAvg).
    model_aggregator: Weighted aggregation factory of the u updates; defaults
      to `tff.aggregators.MeanFactory()`; see `robust_aggregators`.
    distributor: A stateless `DistributionProcess` of u; defaults to
      `tff.learning.templates.build_broadcast_process`.
    metrics_aggregator: `(finalizers, unfinalized type) -> computation`, as
      in TFF's builders; defaults to `tff.learning.metrics.sum_then_finalize`.
    client_weighting: `tff.learning.ClientWeighting` of the u updates.
    evaluation_loss_fn: The loss of `evaluate` (no gradient taken), e.g. a
      cheaper form of the same loss; defaults to `loss_fn`.

  Returns a `composers.PersonalizedProcess`. Raises ValueError for a model
  with no shared trainable variable, hyperparameters out of range or an
  unknown `local_unit`; TypeError for parts that do not fit (`composers`).
"""


def build_fedalt_process(
    model_fn: ModelFn, *, loss_fn: LossFn, metrics_fn: MetricsFn = None,
    client_optimizer: Optimizer, personal_optimizer: Optional[Optimizer] = None,
    server_optimizer: Optional[Optimizer] = None, tau_u: int = 1, tau_v: int = 1,
    local_unit: str = 'epochs', personal_l2: float = 0.0, model_aggregator=None,
    distributor=None, metrics_aggregator=None, client_weighting=NUM_EXAMPLES,
    evaluation_loss_fn: Optional[LossFn] = None) -> PersonalizedProcess:
  """FedAlt (Pillutla et al., ICML 2022, Algorithm 1, alternating): `tau_v`
  passes on v_i with u fixed, then `tau_u` passes on u with the new v_i
  (`local_unit`: 'epochs' or 'steps'); `personal_l2` is the weight decay of v.
  """
  shared_type, personal_type, data_type = _types(model_fn, 'fedalt')
  update = client_work.build_client_update(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, shared_type=shared_type,
      personal_type=personal_type, data_type=data_type, alternating=True,
      client_optimizer=client_optimizer,
      personal_optimizer=personal_optimizer or client_optimizer, tau_u=tau_u, tau_v=tau_v,
      local_unit=local_unit, personal_l2=personal_l2)
  return compose_with_defaults(model_fn, update, loss_fn=loss_fn, metrics_fn=metrics_fn,
                  server_optimizer=server_optimizer, model_aggregator=model_aggregator,
                  distributor=distributor, metrics_aggregator=metrics_aggregator,
                  client_weighting=client_weighting, evaluation_loss_fn=evaluation_loss_fn)


def build_fedsim_process(
    model_fn: ModelFn, *, loss_fn: LossFn, metrics_fn: MetricsFn = None,
    client_optimizer: Optimizer, personal_optimizer: Optional[Optimizer] = None,
    server_optimizer: Optional[Optimizer] = None, tau: int = 1, local_unit: str = 'epochs',
    personal_l2: float = 0.0, model_aggregator=None, distributor=None,
    metrics_aggregator=None, client_weighting=NUM_EXAMPLES,
    evaluation_loss_fn: Optional[LossFn] = None) -> PersonalizedProcess:
  """FedSim (Pillutla et al., Algorithm 1, simultaneous): `tau` passes in which
  u and v_i step together on one gradient per batch."""
  shared_type, personal_type, data_type = _types(model_fn, 'fedsim')
  update = client_work.build_client_update(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, shared_type=shared_type,
      personal_type=personal_type, data_type=data_type, alternating=False,
      client_optimizer=client_optimizer,
      personal_optimizer=personal_optimizer or client_optimizer, tau_u=tau, tau_v=0,
      local_unit=local_unit, personal_l2=personal_l2)
  return compose_with_defaults(model_fn, update, loss_fn=loss_fn, metrics_fn=metrics_fn,
                  server_optimizer=server_optimizer, model_aggregator=model_aggregator,
                  distributor=distributor, metrics_aggregator=metrics_aggregator,
                  client_weighting=client_weighting, evaluation_loss_fn=evaluation_loss_fn)


def build_ffgg_process(
    model_fn: ModelFn, *, loss_fn: LossFn, metrics_fn: MetricsFn = None,
    client_optimizer: Optimizer, personal_optimizer: Optional[Optimizer] = None,
    server_optimizer: Optimizer, finetune_steps: int = 1, local_steps: int = 1,
    model_aggregator=None, distributor=None, metrics_aggregator=None,
    client_weighting=tff.learning.ClientWeighting.UNIFORM,
    evaluation_loss_fn: Optional[LossFn] = None) -> PersonalizedProcess:
  """FFGG (Mishchenko et al., TMLR 2025, Algorithms 1, 2, 4): `finetune_steps`
  full-batch steps on v_i, then the gradient of u (`local_steps` > 1: Local
  FFGG); the server steps with `server_optimizer` (SGD at gamma). Clients are
  averaged uniformly by default, as the paper's (1/n) sum."""
  shared_type, personal_type, data_type = _types(model_fn, 'ffgg')
  update = ffgg.build_ffgg_client_update(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, shared_type=shared_type,
      personal_type=personal_type, data_type=data_type, client_optimizer=client_optimizer,
      personal_optimizer=personal_optimizer or client_optimizer, tau_v=finetune_steps,
      local_steps=local_steps)
  return compose_with_defaults(model_fn, update, loss_fn=loss_fn, metrics_fn=metrics_fn,
                  server_optimizer=server_optimizer, model_aggregator=model_aggregator,
                  distributor=distributor, metrics_aggregator=metrics_aggregator,
                  client_weighting=client_weighting, evaluation_loss_fn=evaluation_loss_fn)


def build_ditto_process(
    model_fn: ModelFn, *, loss_fn: LossFn, metrics_fn: MetricsFn = None,
    client_optimizer: Optimizer, personal_optimizer: Optional[Optimizer] = None,
    server_optimizer: Optional[Optimizer] = None, prox_strength: float = 0.1,
    tau_u: int = 1, tau_v: int = 1, local_unit: str = 'epochs', model_aggregator=None,
    distributor=None, metrics_aggregator=None, client_weighting=NUM_EXAMPLES,
    evaluation_loss_fn: Optional[LossFn] = None) -> PersonalizedProcess:
  """Ditto (Li et al., ICML 2021): FedAvg on the global model and, per client,
  a whole personal model pulled toward it with `prox_strength`; `model_fn`
  has no personal variables (the `none` partition)."""
  shared_type, _, data_type = _types(model_fn, 'ditto', full=True)
  update = full_personalization.build_ditto_client_update(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, weights_type=shared_type,
      data_type=data_type, client_optimizer=client_optimizer,
      personal_optimizer=personal_optimizer or client_optimizer,
      prox_strength=prox_strength, tau_u=tau_u, tau_v=tau_v, local_unit=local_unit)
  return compose_with_defaults(model_fn, update, loss_fn=loss_fn, metrics_fn=metrics_fn,
                  server_optimizer=server_optimizer, model_aggregator=model_aggregator,
                  distributor=distributor, metrics_aggregator=metrics_aggregator,
                  client_weighting=client_weighting, evaluation_loss_fn=evaluation_loss_fn,
                  full=True)


def build_pfedme_process(
    model_fn: ModelFn, *, loss_fn: LossFn, metrics_fn: MetricsFn = None,
    client_optimizer: Optimizer, personal_optimizer: Optional[Optimizer] = None,
    server_optimizer: Optional[Optimizer] = None, prox_strength: float = 1.0,
    inner_steps: int = 5, tau_u: int = 1, local_unit: str = 'epochs', model_aggregator=None,
    distributor=None, metrics_aggregator=None, client_weighting=NUM_EXAMPLES,
    evaluation_loss_fn: Optional[LossFn] = None) -> PersonalizedProcess:
  """pFedMe (T. Dinh et al., NeurIPS 2020): per batch, `inner_steps` steps of
  the Moreau-envelope problem with `prox_strength`, then the local global model
  moves toward it; `model_fn` has no personal variables."""
  shared_type, _, data_type = _types(model_fn, 'pfedme', full=True)
  update = full_personalization.build_pfedme_client_update(
      model_fn=model_fn, loss_fn=loss_fn, metrics_fn=metrics_fn, weights_type=shared_type,
      data_type=data_type, client_optimizer=client_optimizer,
      personal_optimizer=personal_optimizer or client_optimizer,
      prox_strength=prox_strength, inner_steps=inner_steps, tau_u=tau_u,
      local_unit=local_unit)
  return compose_with_defaults(model_fn, update, loss_fn=loss_fn, metrics_fn=metrics_fn,
                  server_optimizer=server_optimizer, model_aggregator=model_aggregator,
                  distributor=distributor, metrics_aggregator=metrics_aggregator,
                  client_weighting=client_weighting, evaluation_loss_fn=evaluation_loss_fn,
                  full=True)


for _builder in (build_fedalt_process, build_fedsim_process, build_ffgg_process,
                 build_ditto_process, build_pfedme_process):
  _builder.__doc__ += _PARTS_DOC

# Algorithm name -> its builder: the one list of algorithms. Full
# personalization (v_i a whole model beside u) is marked apart.
BUILDERS = {'fedalt': build_fedalt_process, 'fedsim': build_fedsim_process,
            'ffgg': build_ffgg_process, 'ditto': build_ditto_process,
            'pfedme': build_pfedme_process}
FULL_ALGORITHMS = ('ditto', 'pfedme')
ALGORITHMS = tuple(BUILDERS)
PARTIAL_ALGORITHMS = tuple(a for a in ALGORITHMS if a not in FULL_ALGORITHMS)


def build_personalized_evaluation(
    model_fn: partition.ModelFn,
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
    model_fn: partition.ModelFn,
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
