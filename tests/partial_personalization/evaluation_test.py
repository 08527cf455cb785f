"""Report summaries: token-weighted mean, weighted percentile, helped/hurt, breakdown."""

import sys

import numpy as np
import pandas as pd
import pytest

from partial_personalization import evaluation


def _frame(values, tokens):
  return pd.DataFrame({'accuracy': values, 'tokens': tokens, 'loss': 1.0},
                      index=[f'c{i}' for i in range(len(values))])


def test_weighted_quantile_by_hand():
  # Weights 1, 1, 8: the value 3 holds 80% of the mass.
  assert evaluation.weighted_quantile([3.0, 1.0, 2.0], [8, 1, 1], 0.1) == 1.0
  assert evaluation.weighted_quantile([3.0, 1.0, 2.0], [8, 1, 1], 0.15) == 2.0
  assert evaluation.weighted_quantile([3.0, 1.0, 2.0], [8, 1, 1], 0.5) == 3.0
  assert evaluation.weighted_quantile([5.0, 7.0], [0, 1], 0.0) == 7.0   # zero weight ignored


def test_report_summary_by_hand():
  pers = _frame([0.5, 0.2, 0.3, 0.4], [10, 30, 20, 40])
  base = _frame([0.4, 0.25, 0.3, 0.4], [10, 30, 20, 40])
  per_client, s = evaluation.personalization_report(pers, base, 'accuracy')
  assert s['clients'] == 4 and s['test_tokens'] == 100
  assert s['personalized_mean'] == pytest.approx((5 + 6 + 6 + 16) / 100)
  assert s['baseline_mean'] == pytest.approx((4 + 7.5 + 6 + 16) / 100)
  assert (s['helped_fraction'], s['hurt_fraction'], s['unchanged_fraction']) == (0.25, 0.25, 0.5)
  assert s['personalized_p10'] == 0.2 and s['baseline_p10'] == 0.25
  assert per_client.delta['c0'] == pytest.approx(0.1)


def test_clients_without_test_tokens_are_left_out():
  pers = _frame([0.5, np.nan], [10, 0])
  per_client, s = evaluation.personalization_report(pers, pers, 'accuracy')
  assert s['clients'] == 1 and list(per_client.index) == ['c0']


def test_breakdown_by_participations():
  per_client = pd.DataFrame({
      'personalized': [0.1, 0.3, 0.5, 0.5], 'baseline': [0.2, 0.2, 0.4, 0.6],
      'tokens': [1, 1, 1, 3], 'participations': [0, 1, 4, 3]})
  per_client['delta'] = per_client.personalized - per_client.baseline
  by = evaluation.breakdown_by(per_client, 'participations', [0, 1, 2, 3])
  assert list(by.index) == ['0', '1', '3+']
  assert list(by.clients) == [1, 1, 2]
  assert by.loc['3+', 'helped_fraction'] == 0.5 and by.loc['0', 'hurt_fraction'] == 1.0
  assert by.loc['3+', 'baseline_mean'] == pytest.approx((0.4 + 1.8) / 4)


def test_float_noise_is_neither_hurt_nor_helped():
  # Two equal accuracies computed on two paths can differ by 1e-16.
  personalized = pd.DataFrame({'accuracy': [0.8 - 1e-16, 0.7, 0.9], 'tokens': [10, 10, 10]},
                              index=['a', 'b', 'c'])
  baseline = pd.DataFrame({'accuracy': [0.8, 0.8, 0.8], 'tokens': [10, 10, 10]},
                          index=['a', 'b', 'c'])
  df, summary = evaluation.personalization_report(personalized, baseline, 'accuracy')
  assert evaluation.is_hurt(df.delta).tolist() == [False, True, False]
  assert summary['hurt_fraction'] == pytest.approx(1 / 3)
  assert summary['unchanged_fraction'] == pytest.approx(1 / 3)
  df['participations'] = [1, 1, 1]
  breakdown = evaluation.breakdown_by(df, 'participations', [0, 1])
  assert breakdown.loc['1+', 'hurt_fraction'] == pytest.approx(1 / 3)


def test_weighted_summary_percentiles_and_std():
  values = np.arange(1.0, 11.0)  # equal weights: quantiles are order statistics
  s = evaluation.weighted_summary(values, np.ones(10))
  assert s['mean'] == pytest.approx(5.5) and s['std'] == pytest.approx(np.std(values))
  assert [s[f'p{p}'] for p in evaluation.PERCENTILES] == [1.0, 3.0, 5.0, 8.0, 9.0]


def test_gating_decides_from_heldout_only():
  # Heldout favours personalization for c0 only (c2: a tie up to float noise,
  # c3: no heldout data); test data says the opposite everywhere.
  per_client = pd.DataFrame({
      'personalized': [0.1, 0.9, 0.9, 0.9], 'baseline': [0.2, 0.3, 0.3, 0.3],
      'tokens': [10.0, 10.0, 10.0, 10.0],
      'heldout_personalized': [0.6, 0.1, 0.3 + 1e-12, np.nan],
      'heldout_baseline': [0.5, 0.2, 0.3, np.nan]}, index=['c0', 'c1', 'c2', 'c3'])
  per_client['delta'] = per_client.personalized - per_client.baseline
  use, s = evaluation.gate_by_heldout(per_client)
  assert use.tolist() == [True, False, False, False]
  assert s['gated_personalized_mean'] == pytest.approx((0.1 + 0.3 * 3) / 4)
  assert s['gated_hurt_fraction'] == 0.25 and s['gated_helped_fraction'] == 0.0
  assert s['gated_personalized_fraction'] == 0.25
  # Changing test results cannot change the choice.
  flipped = per_client.assign(personalized=per_client.baseline - 0.1)
  assert evaluation.gate_by_heldout(flipped)[0].tolist() == use.tolist()


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))


def test_mean_interval_is_the_student_t_interval():
  mean, low, high = evaluation.mean_interval([1.0, 2.0, 3.0])
  # sd 1, n 3, t_{2, 0.975} = 4.3027.
  assert mean == 2.0
  assert high - mean == pytest.approx(4.302653 / np.sqrt(3), rel=1e-5)
  assert mean - low == pytest.approx(high - mean)
  with pytest.raises(ValueError, match='at least 2 seeds'):
    evaluation.mean_interval([1.0])


def test_over_seeds_pairs_differences_by_seed():
  # B beats A by exactly 0.01 on every seed, though seeds differ by far more.
  rows = []
  for seed, level in enumerate([0.10, 0.20, 0.15]):
    rows += [{'run': 'A', 'seed': seed, 'personalized_mean': level},
             {'run': 'B', 'seed': seed, 'personalized_mean': level + 0.01}]
  runs, diffs = evaluation.over_seeds(pd.DataFrame(rows), columns=['personalized_mean'],
                                      baseline='A', pairs=[('A', 'B')])
  assert runs.loc['B', 'personalized_mean'] == pytest.approx(0.16)
  assert runs.loc['B', 'personalized_mean_low'] < 0.1   # Unpaired: wide.
  d = diffs.loc['B - A']
  assert d.difference == pytest.approx(0.01) and d.holds
  assert d.high - d.low == pytest.approx(0.0, abs=1e-12)  # Paired: no spread.
  assert not diffs.loc['A - B'].holds
  assert '| B - A | +1.00% |' in evaluation.format_over_seeds(runs, diffs)
