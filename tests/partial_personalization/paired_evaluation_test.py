"""evaluation.paired and intervals: per-sentence scores add up to the task's
own evaluation, and the intervals behave as their definitions say."""

import sys

import numpy as np
import pandas as pd
import pytest

from partial_personalization import evaluation
from partial_personalization.evaluation import intervals
from partial_personalization.evaluation import paired
from tasks.stackoverflow import task as so_task


def test_sentences_add_up_to_the_tasks_evaluation_of_both_models(two_sites_cache_dir):
  """Two different models on real clients: summed over a client's sentences,
  the paired scores are exactly what the task's per-client evaluation gives."""
  task = so_task.create_task(two_sites_cache_dir, personalization='last_block')
  ids = sorted(task.test_data.client_ids)[:3]
  datasets = [task.eval_dataset('test', c) for c in ids]
  # An untrained model is never right: models a and b always predict one of
  # the two most frequent next words, so both score and differ per sentence.
  labels = np.concatenate([y.ravel() for d in datasets for _, y in d.as_numpy_iterator()])
  vocabulary = task.initial_weights(0)['decoder/bias:0'].shape[0] - 4  # Words are 1..V.
  words = labels[(labels > 0) & (labels <= vocabulary)]  # Not padding, oov, bos, eos.
  first, second = pd.Series(words).value_counts().index[:2]
  models = []
  for word in (first, second):
    named = task.initial_weights(0)
    named['decoder/bias:0'] = named['decoder/bias:0'].copy()
    named['decoder/bias:0'][word] += 100.0
    models.append(task.partition.split(named))
  (u_a, v_a), (u_b, v_b) = models
  computation = paired.build_paired_evaluation(
      task.reconstruction_model_fn, metrics_fn=task.metrics_fn, metric='accuracy')
  rows = paired.evaluate_pairs(computation, u_a, [v_a] * 3, u_b, [v_b] * 3, datasets, ids)
  evaluate = evaluation.build_personalized_evaluation(
      task.reconstruction_model_fn, loss_fn=task.evaluation_loss_fn, metrics_fn=task.metrics_fn)
  a = evaluation.evaluate_clients(evaluate, u_a, [v_a] * 3, datasets, ids, 'accuracy')
  b = evaluation.evaluate_clients(evaluate, u_b, [v_b] * 3, datasets, ids, 'accuracy')
  sums = rows.groupby('client_id')[['a', 'b', 'count']].sum()
  np.testing.assert_allclose(sums['count'], a.tokens.loc[sums.index])
  np.testing.assert_allclose(sums.a / sums['count'], a.accuracy.loc[sums.index], atol=1e-6)
  np.testing.assert_allclose(sums.b / sums['count'], b.accuracy.loc[sums.index], atol=1e-6)
  sentences = [sum(1 for _ in d.unbatch()) for d in datasets]
  assert rows.groupby('client_id').size().loc[ids].tolist() == sentences
  assert (rows.a > 0).any() and (rows.a != rows.b).any()  # Scored separately.
  with pytest.raises(ValueError, match="`metric`='perplexity' is not one of"):
    paired.build_paired_evaluation(
        task.reconstruction_model_fn, metrics_fn=task.metrics_fn, metric='perplexity')


def test_client_intervals_call_a_change_significant_only_beyond_its_noise():
  rng = np.random.default_rng(0)
  rows = []
  for client, (p_a, p_b, n) in {'same': (0.2, 0.2, 300), 'worse': (0.3, 0.15, 300),
                                'better': (0.15, 0.3, 300)}.items():
    for s in range(n):
      count = 10.0
      rows.append(dict(client_id=client, sentence=s, a=rng.binomial(10, p_a),
                       b=rng.binomial(10, p_b), count=count))
  out = intervals.client_change_intervals(pd.DataFrame(rows))
  assert out.loc['worse', 'hurt'] and not out.loc['worse', 'helped']
  assert out.loc['better', 'helped'] and not out.loc['better', 'hurt']
  assert not out.loc['same', 'hurt'] and not out.loc['same', 'helped']
  assert out.loc['same', 'low'] < out.loc['same', 'change'] < out.loc['same', 'high']
  fractions = intervals.hurt_fractions(out)
  assert fractions['hurt_significant'] == pytest.approx(1 / 3)
  assert fractions['hurt_raw'] >= fractions['hurt_significant']


def test_two_level_bootstrap_covers_seeds_and_clients():
  rng = np.random.default_rng(1)
  clients = rng.normal(0.005, 0.01, size=60)  # Per-client effects, +0.5 pt on average.
  # Little seed noise: the interval is the clients' spread over sqrt(60).
  quiet = clients[None] + rng.normal(0, 1e-4, size=(3, 60))
  mean, low, high = intervals.two_level_bootstrap(quiet, np.ones(60))
  assert low < mean < high and low > 0
  assert (high - low) == pytest.approx(2 * 1.96 * 0.01 / np.sqrt(60), rel=0.3)
  # The same clients with large seed-to-seed noise: a wider interval.
  noisy = clients[None] + np.array([[-0.01], [0.0], [0.01]])
  _, low2, high2 = intervals.two_level_bootstrap(noisy, np.ones(60))
  assert high2 - low2 > 2 * (high - low)
  # Weights: a client with all the tokens decides the mean.
  weights = np.full(60, 1e-9)
  weights[0] = 1.0
  assert intervals.two_level_bootstrap(quiet, weights)[0] == pytest.approx(quiet[:, 0].mean())
  with pytest.raises(ValueError, match='must be \\[seeds, clients\\]'):
    intervals.two_level_bootstrap(np.zeros(5), np.ones(5))


def test_a_method_identical_to_the_baseline_is_not_decided_either_way():
  """A part whose chosen finetuning is 0 epochs is the baseline itself: its
  differences are 0 up to float rounding, which decides nothing."""
  rng = np.random.default_rng(0)
  base = rng.uniform(0.1, 0.2, size=(3, 40))
  weights = rng.uniform(500, 1500, size=40)
  # The same values through another path, off by a rounding error of one sign.
  same = base * (1 + 1e-15)
  assert np.all(same > base)
  mean, low, high = intervals.two_level_bootstrap(same - base, weights)
  assert abs(mean) < 1e-12 and abs(low) < 1e-12 and abs(high) < 1e-12
  assert intervals.decided(low, high) is None
  assert intervals.decided(1e-4, 2e-3) == 'above 0'
  assert intervals.decided(-2e-3, -1e-4) == 'below 0'


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
