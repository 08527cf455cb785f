"""Per-client evaluation and the personalization report (the paper's protocol).

Pillutla et al., ICML 2022, Sec. 5: each client is evaluated on its own test
split with its own personal weights v_i and the final shared u; the baseline is
the non-personalized model on the same data. Summaries are weighted by test
tokens (the accuracy metric's `count`; test examples for the image tasks): the
mean (equal to pooled accuracy), standard deviation and 10/25/50/75/90th
percentiles of per-client accuracy, and the fractions of clients helped
(personalized > baseline), hurt (<) and unchanged (within `TOLERANCE`).

Beyond the paper: `gate_by_heldout` picks, per client, the personalized or the
non-personalized model from the client's own heldout split only.
"""

from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
import scipy.stats
import tensorflow_federated as tff

ModelWeights = tff.learning.models.ModelWeights
# |accuracy change| at most this counts as unchanged: the two accuracies of a
# client are ratios of the same counts computed on two paths (float noise).
TOLERANCE = 1e-9

__all__ = [
    'TOLERANCE',
    'is_hurt',
    'evaluate_clients',
    'weighted_quantile',
    'personalization_report',
    'PERCENTILES',
    'weighted_summary',
    'gate_by_heldout',
    'breakdown_by',
    'mean_interval',
    'over_seeds',
    'format_over_seeds',
    'format_summaries',
]


def is_hurt(delta: pd.Series) -> pd.Series:
  """Clients whose accuracy fell by more than float noise."""
  return delta < -TOLERANCE


def evaluate_clients(
    evaluate: tff.Computation,
    shared: ModelWeights,
    personal: Sequence[ModelWeights],
    datasets: Sequence,
    client_ids: Sequence[str],
    metric: str,
    *,
    chunk_size: int = 64,
    progress: Optional[Callable] = None,
) -> pd.DataFrame:
  """Runs `evaluate` (u@SERVER, v@CLIENTS, data@CLIENTS) over clients in chunks.

  Args:
    evaluate: A `PersonalizedProcess.evaluate`-style federated computation.
    shared: u. personal: v_i per client. datasets: evaluation datasets.
    client_ids: Ids, same order. metric: the mean-type metric to report.
    chunk_size: Clients per TFF call (bounds memory).
    progress: Optional callable(n) to advance a progress bar.

  Returns:
    DataFrame indexed by client_id with columns `<metric>` (float), `tokens`
    (the metric's count, float) and `loss` (mean batch loss).
  """
  rows = []
  for start in range(0, len(client_ids), chunk_size):
    end = start + chunk_size
    results = evaluate(shared, list(personal[start:end]), list(datasets[start:end]))
    for cid, r in zip(client_ids[start:end], results):
      total, count = (float(x) for x in r[metric])
      loss_total, loss_count = (float(x) for x in r['loss'])
      rows.append(dict(client_id=cid, **{metric: total / count if count else np.nan},
                       tokens=count, loss=loss_total / loss_count if loss_count else np.nan))
    if progress:
      progress(len(results))
  return pd.DataFrame(rows).set_index('client_id')


def weighted_quantile(values, weights, q: float) -> float:
  """Quantile q in [0, 1] of `values` with nonnegative `weights` (inverted CDF)."""
  values, weights = np.asarray(values, float), np.asarray(weights, float)
  keep = weights > 0
  values, weights = values[keep], weights[keep]
  if not len(values):
    return float('nan')
  order = np.argsort(values)
  cdf = np.cumsum(weights[order]) / weights.sum()
  return float(values[order][np.searchsorted(cdf, q, side='left')])


def personalization_report(
    personalized: pd.DataFrame, baseline: pd.DataFrame, metric: str,
    *, tolerance: float = TOLERANCE,
) -> tuple[pd.DataFrame, dict]:
  """Joins per-client results and summarizes them.

  Args:
    personalized, baseline: Outputs of `evaluate_clients` on the same clients.
    metric: Column to compare. tolerance: |difference| at most this is unchanged.

  Returns:
    (per-client DataFrame with `personalized`, `baseline`, `delta`, `tokens`;
     summary dict: clients, mean and p10 of both, helped/hurt/unchanged fractions).
  """
  df = pd.DataFrame({
      'personalized': personalized[metric],
      'baseline': baseline[metric].reindex(personalized.index),
      'tokens': personalized['tokens'],
  }).dropna()
  df = df[df.tokens > 0]
  df['delta'] = df.personalized - df.baseline
  w = df.tokens
  summary = {'clients': int(len(df)), 'test_tokens': int(w.sum())}
  for column in ('personalized', 'baseline'):
    summary.update(weighted_summary(df[column], w, prefix=column + '_'))
  summary.update({
      'helped_fraction': float((df.delta > tolerance).mean()),
      'hurt_fraction': float((df.delta < -tolerance).mean()),
      'unchanged_fraction': float((df.delta.abs() <= tolerance).mean()),
  })
  return df, summary


PERCENTILES = (10, 25, 50, 75, 90)


def weighted_summary(values, weights, prefix='') -> dict:
  """Weighted mean, standard deviation and percentiles (`p10` ... `p90`)."""
  values, weights = np.asarray(values, float), np.asarray(weights, float)
  mean = float(np.average(values, weights=weights))
  out = {f'{prefix}mean': mean,
         f'{prefix}std': float(np.sqrt(np.average((values - mean) ** 2, weights=weights)))}
  for p in PERCENTILES:
    out[f'{prefix}p{p}'] = weighted_quantile(values, weights, p / 100)
  return out


def gate_by_heldout(per_client: pd.DataFrame, *, margin: float = 1e-6
                    ) -> tuple[pd.Series, dict]:
  """Per client, the personalized or the shared model, chosen on heldout data only.

  The personalized model is used where its heldout accuracy beats the
  non-personalized one's by more than `margin` (accuracies are ratios of token
  counts, so real differences exceed 1e-4; the margin absorbs float noise);
  ties and clients without heldout data keep the shared model. Test columns
  are only read to report the outcome of the choice.

  Args:
    per_client: `personalization_report`'s frame plus `heldout_personalized`
      and `heldout_baseline` (NaN where a client has no heldout data).

  Returns:
    (use_personalized: bool Series by client, summary with `gated_*` keys:
     the personalized_* and helped/hurt/unchanged keys of
     `personalization_report` for the gated model, and
     `gated_personalized_fraction`).
  """
  use = (per_client.heldout_personalized - per_client.heldout_baseline) > margin
  use = use.rename('use_personalized')
  gated = per_client.personalized.where(use, per_client.baseline)

  def frame(values):
    return pd.DataFrame({'accuracy': values, 'tokens': per_client.tokens})

  _, summary = personalization_report(frame(gated), frame(per_client.baseline), 'accuracy')
  out = {f'gated_{k}': v for k, v in summary.items()
         if k.startswith(('personalized_', 'helped', 'hurt', 'unchanged'))}
  out['gated_personalized_fraction'] = float(use.mean())
  return use, out


def breakdown_by(per_client: pd.DataFrame, column: str, bins: Sequence[int]) -> pd.DataFrame:
  """Helped/hurt and token-weighted means per group of `column` values.

  `bins` are the lower edges of the groups; the last group is open ("3+").
  Used with `participations` to show how personalization depends on how often
  a client trained its personal part.
  """
  labels = [f'{b}' for b in bins[:-1]] + [f'{bins[-1]}+']
  group = pd.cut(per_client[column], bins=list(bins) + [np.inf], right=False, labels=labels)
  rows = []
  for label, g in per_client.groupby(group, observed=True):
    rows.append({column: label, 'clients': len(g),
                 'personalized_mean': np.average(g.personalized, weights=g.tokens),
                 'baseline_mean': np.average(g.baseline, weights=g.tokens),
                 'helped_fraction': (g.delta > TOLERANCE).mean(),
                 'hurt_fraction': is_hurt(g.delta).mean()})
  return pd.DataFrame(rows).set_index(column)


def mean_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): the mean of `values` (one per seed) and its two-sided
  Student-t confidence interval, mean +- t_{n-1} * sd / sqrt(n).

  Raises:
    ValueError: fewer than 2 values (no interval without a spread).
  """
  values = np.asarray(values, float)
  if len(values) < 2:
    raise ValueError(f'an interval needs at least 2 seeds, got {len(values)}')
  mean = float(values.mean())
  half = float(scipy.stats.t.ppf(0.5 + confidence / 2, len(values) - 1)
               * values.std(ddof=1) / np.sqrt(len(values)))
  return mean, mean - half, mean + half


def over_seeds(summaries: pd.DataFrame, *, columns: Sequence[str], baseline: str,
               pairs: Sequence[tuple[str, str]] = (),
               confidence: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
  """Rows of runs as mean and interval over seeds, and paired differences.

  Args:
    summaries: One row per (run, seed): columns `run`, `seed` and `columns`
      (per-run summary numbers, e.g. `personalized_mean`).
    columns: The columns summarized.
    baseline: The run every other run is compared with (paired by seed, on
      `personalized_mean`).
    pairs: More (a, b) run pairs whose difference a - b is paired by seed.

  Returns:
    (per run: `<column>`, `<column>_low`, `<column>_high`, `seeds`; per pair:
     `difference`, `low`, `high`, `seeds`, `holds` (the interval lies above 0),
     `per_seed` (the differences)).
  """
  rows = {}
  for run, group in summaries.groupby('run', sort=False):
    row = {'seeds': len(group)}
    for column in columns:
      row[column], row[f'{column}_low'], row[f'{column}_high'] = mean_interval(
          group[column], confidence)
    rows[run] = row
  by_seed = summaries.pivot(index='seed', columns='run', values='personalized_mean')
  diffs = {}
  for a, b in [(run, baseline) for run in rows if run != baseline] + list(pairs):
    d = (by_seed[a] - by_seed[b]).dropna()
    mean, low, high = mean_interval(d, confidence)
    diffs[f'{a} - {b}'] = {'difference': mean, 'low': low, 'high': high, 'seeds': len(d),
                           'holds': bool(low > 0),
                           'per_seed': ' '.join(f'{x:+.2%}' for x in d)}
  return pd.DataFrame(rows).T, pd.DataFrame(diffs).T


def format_over_seeds(runs: pd.DataFrame, differences: pd.DataFrame) -> str:
  """Markdown tables of `over_seeds`: runs as "mean [low, high]" (%)."""
  def cell(row, column, fmt='.2%'):
    if pd.isna(row[column]):
      return ''
    return (f'{row[column]:{fmt}} [{row[column + "_low"]:{fmt}}, '
            f'{row[column + "_high"]:{fmt}}]')
  columns = [c for c in runs.columns if f'{c}_low' in runs.columns]
  names = {'personalized_mean': 'mean test accuracy', 'personalized_p10': 'p10',
           'helped_fraction': 'helped', 'hurt_fraction': 'hurt',
           'unchanged_fraction': 'unchanged', 'gated_personalized_mean': 'heldout-gated mean', 'gated_hurt_fraction': 'gated hurt'}
  lines = ['| run | seeds | ' + ' | '.join(names.get(c, c) for c in columns) + ' |',
           '|' + '---|' * (len(columns) + 2)]
  for run, row in runs.iterrows():
    lines.append(f'| {run} | {int(row.seeds)} | '
                 + ' | '.join(cell(row, c, '.1%' if 'fraction' in c else '.2%')
                              for c in columns) + ' |')
  lines += ['', '| difference (paired by seed) | mean | 95% interval | per seed | '
            'interval above 0 |', '|---|---|---|---|---|']
  for name, d in differences.iterrows():
    lines.append(f"| {name} | {d.difference:+.2%} | [{d.low:+.2%}, {d.high:+.2%}] | "
                 f"{d.per_seed} | {'yes' if d.holds else 'no'} |")
  return '\n'.join(lines)


def format_summaries(summaries: dict[str, dict]) -> str:
  """Markdown table, one row per run name: means and p10 (personalized and
  not), helped + hurt + unchanged (they add to 100%), and the heldout-gated
  mean and hurt when the summary has them (`gate_by_heldout`)."""
  header = ('| run | clients | pers. mean | non-pers. mean | pers. p10 | '
            'non-pers. p10 | helped | hurt | unchanged | heldout-gated mean | gated hurt |')
  lines = [header, '|' + '---|' * 11]

  def percent(s, key, fmt):
    return f'{s[key]:{fmt}}' if key in s else ''

  for name, s in summaries.items():
    lines.append(
        f"| {name} | {s['clients']} | {s['personalized_mean']:.2%} | "
        f"{s['baseline_mean']:.2%} | {s['personalized_p10']:.2%} | "
        f"{s['baseline_p10']:.2%} | {s['helped_fraction']:.1%} | "
        f"{s['hurt_fraction']:.1%} | {percent(s, 'unchanged_fraction', '.1%')} | "
        f"{percent(s, 'gated_personalized_mean', '.2%')} | "
        f"{percent(s, 'gated_hurt_fraction', '.1%')} |")
  return '\n'.join(lines)
