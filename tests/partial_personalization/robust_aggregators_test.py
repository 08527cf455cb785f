"""Robust aggregators against hand-computed values, through TFF."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import algorithms
from partial_personalization.templates import robust_aggregators as ra
import testing_models as tm

# Two tensors per update, four clients; the last client is an outlier.
VALUE_TYPE = tff.types.to_type([tff.TensorType(np.float32, [2]), tff.TensorType(np.float32, [1])])
UPDATES = [
    [np.array([1.0, 10.0], np.float32), np.array([0.0], np.float32)],
    [np.array([2.0, -5.0], np.float32), np.array([1.0], np.float32)],
    [np.array([3.0, 0.0], np.float32), np.array([100.0], np.float32)],
    [np.array([40.0, 1.0], np.float32), np.array([2.0], np.float32)],
]
WEIGHTS = [1.0, 1.0, 1.0, 5.0]


def _aggregate(factory, updates=UPDATES, weights=WEIGHTS, rounds=1):
  process = factory.create(VALUE_TYPE, tff.TensorType(np.float32))
  state = process.initialize()
  for _ in range(rounds):
    output = process.next(state, updates, weights)
    state = output.state
  return [np.asarray(t) for t in output.result], output.measurements


def _bucket_order(values, seed):
  """The spec of the bucketing shuffle: canonical order by a seeded random
  projection of each row, then a seeded permutation."""
  projection = tf.random.stateless_normal(
      [values.shape[1]], tf.constant(np.add(seed, ra.PROJECTION_SEED_OFFSET), tf.int64)).numpy()
  canonical = np.argsort(values @ projection, kind='stable')
  return canonical[np.argsort(tf.random.stateless_uniform(
      [len(values)], tf.constant(seed, tf.int64)).numpy())]


def _close(result, expected):
  np.testing.assert_allclose(np.concatenate(result), np.concatenate(expected), rtol=1e-6)


def test_median_even_and_odd_client_counts():
  result, measurements = _aggregate(ra.RobustAggregationFactory('median'))
  # Sorted per coordinate: (1,2,3,40), (-5,0,1,10), (0,1,2,100): middle pairs.
  _close(result, [[2.5, 0.5], [1.5]])
  assert measurements == {'num_clients': 4, 'num_buckets': 4}
  result, _ = _aggregate(ra.RobustAggregationFactory('median'), UPDATES[:3], WEIGHTS[:3])
  _close(result, [[2.0, 0.0], [1.0]])


def test_trimmed_mean_drops_extremes_per_coordinate():
  # beta=0.25 of 4 values: one dropped at each end.
  result, _ = _aggregate(ra.RobustAggregationFactory('trimmed_mean', trim_fraction=0.25))
  _close(result, [[2.5, 0.5], [1.5]])
  # beta=0.2 of 4: floor(0.8) = 0 dropped, the plain (unweighted) mean.
  result, _ = _aggregate(ra.RobustAggregationFactory('trimmed_mean', trim_fraction=0.2))
  _close(result, [[46 / 4, 6 / 4], [103 / 4]])


def test_mean_rule_is_weighted():
  result, _ = _aggregate(ra.RobustAggregationFactory('mean'))
  _close(result, [[(1 + 2 + 3 + 200) / 8, (10 - 5 + 0 + 5) / 8], [(0 + 1 + 100 + 10) / 8]])


def test_bucketing_averages_shuffled_buckets_then_applies_the_rule():
  values = np.array([np.concatenate(u) for u in UPDATES], np.float32)
  order = _bucket_order(values, (5, 0))  # factory seed 5, round 0
  buckets = [values[order[:2]].mean(0), values[order[2:]].mean(0)]
  expected = 0.5 * (buckets[0] + buckets[1])  # median of two buckets
  result, measurements = _aggregate(ra.RobustAggregationFactory('median', bucket_size=2, seed=5))
  np.testing.assert_allclose(np.concatenate(result), expected, rtol=1e-6)
  assert measurements == {'num_clients': 4, 'num_buckets': 2}
  # A bucket of 3 and the remaining 1: trimmed mean of 2 values trims none.
  result, _ = _aggregate(ra.RobustAggregationFactory(
      'trimmed_mean', trim_fraction=0.25, bucket_size=3, seed=5))
  expected = 0.5 * (values[order[:3]].mean(0) + values[order[3]])
  np.testing.assert_allclose(np.concatenate(result), expected, rtol=1e-6)


def test_bucketing_reshuffles_every_round():
  values = np.array([np.concatenate(u) for u in UPDATES], np.float32)
  factory = ra.RobustAggregationFactory('trimmed_mean', trim_fraction=0.25, bucket_size=3,
                                        seed=5)
  results = []
  for round_num in (0, 1, 2):
    order = _bucket_order(values, (5, round_num))
    expected = 0.5 * (values[order[:3]].mean(0) + values[order[3]])
    result, _ = _aggregate(factory, rounds=round_num + 1)
    np.testing.assert_allclose(np.concatenate(result), expected, rtol=1e-6)
    results.append(tuple(np.round(expected, 4)))
  assert len(set(results)) > 1  # The seed (5, round) gives other buckets.


def test_bucketing_ignores_the_order_clients_arrive_in():
  factory = ra.RobustAggregationFactory('trimmed_mean', trim_fraction=0.25, bucket_size=3,
                                        seed=5)
  result, _ = _aggregate(factory)
  for permutation in ([3, 2, 1, 0], [1, 3, 0, 2]):
    other, _ = _aggregate(factory, [UPDATES[i] for i in permutation],
                          [WEIGHTS[i] for i in permutation])
    np.testing.assert_allclose(np.concatenate(other), np.concatenate(result), rtol=1e-6)


@pytest.mark.parametrize('kwargs,error', [
    (dict(rule='mode'), 'unknown aggregation rule'),
    (dict(rule='trimmed_mean', trim_fraction=0.5), 'trim_fraction'),
    (dict(rule='median', bucket_size=0), 'bucket_size'),
])
def test_bad_settings_are_named(kwargs, error):
  rule = kwargs.pop('rule')
  with pytest.raises(ValueError, match=error):
    ra.RobustAggregationFactory(rule, **kwargs)


def test_plugs_into_tff_fedavg_and_our_processes():
  factory = ra.RobustAggregationFactory('median')
  fedavg = tff.learning.algorithms.build_weighted_fed_avg(
      lambda: tff.learning.models.from_keras_model(
          tm.keras_model_fn(), loss=tf.keras.losses.MeanSquaredError(), input_spec=tm.INPUT_SPEC),
      client_optimizer_fn=tff.learning.optimizers.build_sgdm(0.1), model_aggregator=factory)
  # Three one-example clients, u = v = 0: each update is 0.1 * 2 y x (u + v step).
  data = [tm.dataset([1.0], [y]) for y in (1.0, 2.0, 30.0)]
  state = fedavg.next(fedavg.initialize(), data).state
  np.testing.assert_allclose(
      np.concatenate([np.ravel(w) for w in fedavg.get_model_weights(state).trainable]),
      [0.4, 0.4], rtol=1e-5)  # median of (0.2, 0.4, 6.0)
  process = algorithms.build_fedsim_process(
      tm.model_fn, loss_fn=tf.keras.losses.MeanSquaredError,
      client_optimizer=tff.learning.optimizers.build_sgdm(0.1), model_aggregator=factory)
  state, _, _ = process.next(process.initialize(), [tm.weights(0.0)] * 3, data)
  assert tm.scalar(process.get_model_weights(state)) == pytest.approx(0.4, rel=1e-5)
