"""Figures of the personalization report (matplotlib, written as PNG)."""

import matplotlib

matplotlib.use('Agg')  # Files only; no display needed.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import pandas as pd


def plot_personalization(per_client: dict[str, pd.DataFrame], path: str,
                         metric: str = 'accuracy') -> None:
  """Per-client personalized vs non-personalized scatter, and delta histograms.

  Args:
    per_client: run name -> per-client frame of `personalization_report`
      (columns `personalized`, `baseline`, `delta`, `tokens`).
    path: Output PNG path.
    metric: Axis label.
  """
  n = len(per_client)
  fig, axes = plt.subplots(2, n, figsize=(5 * n, 9), squeeze=False)
  for col, (name, df) in enumerate(per_client.items()):
    ax = axes[0, col]
    hurt = df.delta < 0
    ax.scatter(df.baseline[~hurt], df.personalized[~hurt], s=8 + df.tokens[~hurt] / 20,
               alpha=0.6, label=f'helped or same ({(~hurt).sum()})')
    ax.scatter(df.baseline[hurt], df.personalized[hurt], s=8 + df.tokens[hurt] / 20,
               alpha=0.6, color='tab:red', label=f'hurt ({hurt.sum()})')
    hi = max(df.baseline.max(), df.personalized.max()) * 1.05
    ax.plot([0, hi], [0, hi], 'k--', lw=1)
    ax.set(xlabel=f'non-personalized {metric}', ylabel=f'personalized {metric}',
           title=f'{name}: one point per client (size ~ test tokens)')
    ax.legend(loc='upper left')
    ax = axes[1, col]
    ax.hist(df.delta * 100, bins=30, color='tab:blue', alpha=0.8)
    ax.axvline(0, color='k', lw=1)
    ax.set(xlabel=f'{metric} change from personalization (points)', ylabel='clients',
           title=f'{name}: per-client change')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
