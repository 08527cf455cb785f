"""Intervals that cover both training randomness and the sample of clients,
and per-client tests of a change: how the paper's findings are decided.

The findings of Pillutla et al. (ICML 2022, Sec. 5) are differences of mean
per-client test accuracy between two methods run on the same clients with the
same seeds. Two sources of noise enter such a difference: the training seed
(client sampling, shuffles, finetuning) and which clients happen to be in the
population (a client's change is itself measured on a few hundred tokens).

* `two_level_bootstrap`: a paired bootstrap over seeds, then clients. One
  replicate draws seeds with replacement and, independently, clients with
  replacement (the same clients for every drawn seed, so the pairing by
  client is kept); the statistic is the mean over the drawn seeds of the
  token-weighted mean over the drawn clients of (method a - method b). Its
  2.5% and 97.5% percentiles are the 95% interval.
* `client_change_intervals`: one client's accuracy change between two models,
  with a 95% bootstrap interval over the client's test sentences (both models
  scored on the same sentences, `paired`). A client is
  *significantly hurt* when the whole interval lies below 0: the raw count of
  clients whose accuracy fell includes those whose fall is test noise.
"""

from typing import Optional

import numpy as np
import pandas as pd

CONFIDENCE = 0.95
REPLICATES = 4000


def bootstrap_means(values: np.ndarray, weights: np.ndarray, *, replicates: int = REPLICATES,
                    seed: int = 0) -> np.ndarray:
  """Two-level bootstrap replicates of several statistics at once (module doc).

  Args:
    values: float[k, seeds, clients]: k quantities (e.g. differences of two
      methods) per seed and client, all resampled with the same draws.
    weights: float[clients], each client's weight (its test tokens).
    replicates: bootstrap replicates. seed: the resampling's seed.

  Returns:
    float[replicates, k]: per replicate, the mean over drawn seeds of the
    weighted mean over drawn clients, for each quantity.

  Raises:
    ValueError: shapes disagree, or no seed or client.
  """
  v = np.asarray(values, np.float64)
  if v.ndim != 3 or 0 in v.shape:
    raise ValueError(f'`values` must be [k, seeds, clients], got shape {v.shape}')
  k, seeds, clients = v.shape
  w = np.broadcast_to(np.asarray(weights, np.float64), (clients,))
  rng = np.random.default_rng(seed)
  seed_draws = rng.integers(seeds, size=(replicates, seeds))
  client_draws = rng.integers(clients, size=(replicates, clients))
  counts = np.zeros((replicates, clients))  # How often each client is drawn.
  np.add.at(counts, (np.arange(replicates)[:, None], client_draws), 1)
  cw = counts * w  # [replicates, clients]
  per_seed = np.einsum('rc,ksc->rks', cw, v) / cw.sum(1)[:, None, None]
  picked = np.take_along_axis(per_seed, np.broadcast_to(seed_draws[:, None, :],
                                                        (replicates, k, seeds)), 2)
  return picked.mean(2)


def two_level_bootstrap(differences: np.ndarray, weights: np.ndarray, *,
                        replicates: int = REPLICATES, confidence: float = CONFIDENCE,
                        seed: int = 0) -> tuple[float, float, float]:
  """Mean difference and its interval over seeds and clients (module doc).

  Args:
    differences: float[seeds, clients], per-client difference (a - b) of each seed.
    weights: float[clients], each client's weight (its test tokens) in a
      seed's mean.
    replicates: bootstrap replicates. confidence: interval coverage.
    seed: the resampling's seed (the result is a pure function of the inputs).

  Returns:
    (mean, low, high): the point estimate (mean over seeds of the weighted mean
    over clients) and the percentile interval, in the units of `differences`.

  Raises:
    ValueError: shapes disagree, or no seed or client.
  """
  d = np.asarray(differences, np.float64)
  if d.ndim != 2 or 0 in d.shape:
    raise ValueError(f'`differences` must be [seeds, clients], got shape {d.shape}')
  w = np.asarray(weights, np.float64)
  point = float(np.mean(d @ w / w.sum()))
  stats = bootstrap_means(d[None], w, replicates=replicates, seed=seed)[:, 0]
  alpha = (1 - confidence) / 2
  return point, float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha))


def client_change_intervals(sentences: pd.DataFrame, *, replicates: int = 2000,
                            confidence: float = CONFIDENCE, seed: int = 0) -> pd.DataFrame:
  """Each client's change b - a with a bootstrap interval over its sentences.

  Args:
    sentences: `paired.evaluate_pairs` rows (client_id, a, b,
      count): per sentence, the metric's total under model a (the baseline)
      and model b (the personalized one), and its count.

  Returns:
    Indexed by client id: `a`, `b` (the client's metric under each model),
    `change` (b - a), `low`, `high` (the interval of the change), `tokens`,
    `sentences`, and `hurt` / `helped` (the whole interval below / above 0).
  """
  rng = np.random.default_rng(seed)
  alpha = (1 - confidence) / 2
  rows = {}
  for client, group in sentences.groupby('client_id', sort=True):
    a, b, n = (group[k].to_numpy(np.float64) for k in ('a', 'b', 'count'))
    total = n.sum()
    if total == 0:
      continue
    draws = rng.integers(len(n), size=(replicates, len(n)))
    change = (b[draws].sum(1) - a[draws].sum(1)) / np.maximum(n[draws].sum(1), 1e-12)
    low, high = np.quantile(change, [alpha, 1 - alpha])
    rows[client] = dict(a=a.sum() / total, b=b.sum() / total,
                        change=(b.sum() - a.sum()) / total, low=low, high=high,
                        tokens=total, sentences=len(n))
  out = pd.DataFrame.from_dict(rows, orient='index')
  out.index.name = 'client_id'
  out['hurt'] = out.high < 0
  out['helped'] = out.low > 0
  return out


def hurt_fractions(per_client: pd.DataFrame, *, tolerance: float = 1e-9) -> dict:
  """Share of clients whose accuracy fell at all (`raw`), and significantly
  (`significant`, `client_change_intervals`' `hurt`); also `helped`."""
  n = len(per_client)
  return {'clients': n,
          'hurt_raw': float((per_client.change < -tolerance).mean()) if n else np.nan,
          'hurt_significant': float(per_client.hurt.mean()) if n else np.nan,
          'helped_significant': float(per_client.helped.mean()) if n else np.nan}


def format_interval(mean: float, low: float, high: float, *, scale: float = 100.0,
                    unit: str = ' pt', sign: bool = True) -> str:
  """`+0.52 pt [+0.11, +0.93]` (differences of accuracies, in points)."""
  fmt = '{:+.2f}' if sign else '{:.2f}'
  return (f'{fmt.format(mean * scale)}{unit} [{fmt.format(low * scale)}, '
          f'{fmt.format(high * scale)}]')


# Below this, a bound is 0 in float rounding (two identical models' weighted
# means differ by ~1e-17, which is no difference).
_ZERO = 1e-12


def decided(low: float, high: float) -> Optional[str]:
  """'above 0', 'below 0', or None when the interval contains 0 (a bound
  within float rounding of 0 counts as 0)."""
  if low > _ZERO:
    return 'above 0'
  if high < -_ZERO:
    return 'below 0'
  return None
