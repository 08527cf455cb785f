"""What every algorithm's builder shares: its types, TFF's default parts, the
composition, and the documentation of the common arguments.

Each `build_<algorithm>_process` makes its client update
(`templates.client_work` contract) and ends with `compose_with_defaults`: TFF's
broadcast, example-weighted mean (`tff.aggregators`), optimizer finalizer and
sum-then-finalize metrics, each replaceable, composed by
`templates.composers.compose_personalized_process`.
"""

import collections
from typing import Callable, Optional

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.evaluation import computations
from partial_personalization.models import partition
from partial_personalization.templates import composers
from partial_personalization.templates import local_training

ModelWeights = tff.learning.models.ModelWeights
PersonalizedProcess = composers.PersonalizedProcess
NUM_EXAMPLES = tff.learning.ClientWeighting.NUM_EXAMPLES
ModelFn = partition.ModelFn
LossFn = Callable[[], tf.keras.losses.Loss]
MetricsFn = Optional[Callable[[], list[tf.keras.metrics.Metric]]]
Optimizer = tff.learning.optimizers.Optimizer


def process_types(model_fn: ModelFn, algorithm: str, whole_model: bool = False):
  """(u type, v type, data type) of `model_fn`; v is a whole model of u's type
  when `whole_model`. Raises ValueError when u has no trainable variable, or
  for `whole_model` when the model has personal variables."""
  shared_type, personal_type, data_type = composers.model_types(model_fn)
  if not shared_type.trainable:
    raise ValueError(
        'the model has no shared trainable variables (full personalization): '
        'there is nothing to federate; train each client locally instead.')
  if whole_model:
    if personal_type.trainable or personal_type.non_trainable:
      raise ValueError(
          f'{algorithm} personalizes the whole model: build it with the `none` '
          'partition (v_i is a full copy of the model).')
    personal_type = shared_type
  return shared_type, personal_type, data_type


def compose_with_defaults(model_fn: ModelFn, client_update: tff.Computation, *, loss_fn: LossFn,
             metrics_fn: MetricsFn, server_optimizer: Optional[Optimizer], model_aggregator,
             distributor, metrics_aggregator, client_weighting, evaluation_loss_fn,
             whole_model: bool = False) -> PersonalizedProcess:
  """A `PersonalizedProcess` of `client_update` (TF computation `(u, v_i, data)
  -> client_work.ClientOutput`) with TFF's default parts, or the given ones.

  What every `build_<algorithm>_process` ends with; a new algorithm's builder
  does the same (docs/design.md, "How to add an algorithm"). Arguments as in
  the builders (see `PARTS_DOC`); `whole_model`: v_i is a whole model of u's
  type (evaluated alone).
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
        for m in local_training.build_metrics(loss_fn, metrics_fn))
  return composers.compose_personalized_process(
      initial_shared_weights=initial_shared_weights,
      client_update=client_update,
      evaluate=computations.build_personalized_evaluation(
          model_fn, loss_fn=evaluation_loss_fn or loss_fn, metrics_fn=metrics_fn,
          whole_model=whole_model),
      distributor=distributor or tff.learning.templates.build_broadcast_process(shared_type),
      aggregator=model_aggregator.create(shared_type.trainable, tff.TensorType(np.float32)),
      finalizer=tff.learning.templates.build_apply_optimizer_finalizer(
          server_optimizer, shared_type),
      metrics_aggregation=metrics_aggregator(
          finalizers, client_update.type_signature.result.metrics),
      client_weighting=client_weighting)


PARTS_DOC = """
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
