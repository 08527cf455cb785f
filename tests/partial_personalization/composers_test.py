"""The composer: parts are injected, and parts that do not fit are refused by name.

Tiny model of `testing_models`: prediction = (u + v) x, squared loss, so one
SGD step on u from u0 with v = 0 on (x, y) is u0 - lr * 2 (u0 x - y) x.
"""

import collections
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import algorithms
from partial_personalization.templates import client_work
from partial_personalization.templates import composers
import testing_models as tm

LR = 0.1


def _zeros_distributor(shared_type):
  """A stateless distributor that sends every client u = 0 (not the server's u)."""

  @tff.federated_computation
  def initialize():
    return tff.federated_value((), tff.SERVER)

  zeros = tff.tensorflow.computation(
      lambda w: tf.nest.map_structure(tf.zeros_like, w), shared_type)

  @tff.federated_computation(initialize.type_signature.result,
                             tff.FederatedType(shared_type, tff.SERVER))
  def next_fn(state, weights):
    return tff.templates.MeasuredProcessOutput(
        state=state, result=tff.federated_broadcast(tff.federated_map(zeros, weights)),
        measurements=tff.federated_value((), tff.SERVER))

  return tff.learning.templates.DistributionProcess(initialize, next_fn)


def _build(**parts):
  return algorithms.build_fedalt_process(
      tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
      client_optimizer=tff.learning.optimizers.build_sgdm(LR), tau_v=0, **parts)


def test_injected_distributor_is_what_clients_see():
  shared_type, _, _ = composers.model_types(tm.model_fn)
  process = _build(distributor=_zeros_distributor(shared_type))
  state = process.set_model_weights(process.initialize(), tm.weights(5.0))
  x, y = 2.0, 1.0
  state, _, _ = process.next(state, [tm.weights(0.0)], [tm.dataset([x], [y])])
  # The client stepped from u = 0, the server applied that update to u = 5.
  update = 0.0 - (0.0 - LR * 2 * (0.0 * x - y) * x)
  assert tm.scalar(process.get_model_weights(state)) == pytest.approx(5.0 - update)


def test_injected_metrics_aggregator_reports_the_round():
  seen = {}

  def only_loss(finalizers, unfinalized_type):
    seen['names'] = list(finalizers)

    @tff.federated_computation(tff.FederatedType(unfinalized_type, tff.CLIENTS))
    def aggregate(metrics):
      summed = tff.federated_sum(metrics.loss)
      return tff.federated_map(
          tff.tensorflow.computation(lambda s: collections.OrderedDict(loss_sum=s[0])),
          summed)

    return aggregate

  process = _build(metrics_aggregator=only_loss)
  _, _, metrics = process.next(process.initialize(), [tm.weights(0.0)] * 2,
                               [tm.dataset([1.0], [2.0]), tm.dataset([1.0, 1.0], [2.0, 2.0])])
  assert seen['names'] == ['loss']
  # Loss before each step, summed over the 3 batches: 4 (client 1), 4 + 2.56 (client 2).
  assert metrics['client_work']['loss_sum'] == pytest.approx(4.0 + 4.0 + 2.56, rel=1e-5)


def test_parts_that_do_not_fit_are_named():
  shared_type, _, _ = composers.model_types(tm.model_fn)
  bad_aggregator = tff.aggregators.MeanFactory()  # Built for u and v together:
  two_scalars = tff.types.to_type([(np.float32, (1, 1)), (np.float32, (1, 1))])

  class WrongShape(tff.aggregators.WeightedAggregationFactory):
    def create(self, value_type, weight_type):
      return bad_aggregator.create(two_scalars, weight_type)

  with pytest.raises(TypeError, match='aggregator does not fit'):
    _build(model_aggregator=WrongShape())

  @tff.federated_computation
  def counting_init():
    return tff.federated_value(0, tff.SERVER)

  @tff.federated_computation(counting_init.type_signature.result,
                             tff.FederatedType(shared_type, tff.SERVER))
  def counting_next(state, weights):
    return tff.templates.MeasuredProcessOutput(
        state=state, result=tff.federated_broadcast(weights),
        measurements=tff.federated_value((), tff.SERVER))

  with pytest.raises(TypeError, match='no state'):
    _build(distributor=tff.learning.templates.DistributionProcess(counting_init, counting_next))


def test_client_step_returns_the_client_output_contract():
  process = _build()
  outputs = process.client_step(process.initialize(), [tm.weights(0.0)],
                                [tm.dataset([1.0], [2.0])])
  assert isinstance(outputs[0], client_work.ClientOutput)
  assert float(outputs[0].update_weight) == 1.0


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
