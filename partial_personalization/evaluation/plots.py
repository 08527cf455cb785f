"""Figures of the personalization report (matplotlib, written as PNG)."""

import matplotlib

matplotlib.use('Agg')  # Files only; no display needed.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import pandas as pd

from partial_personalization.evaluation import reports


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
    hurt = reports.is_hurt(df.delta)
    # In %, as the tables.
    ax.scatter(100 * df.baseline[~hurt], 100 * df.personalized[~hurt],
               s=8 + df.tokens[~hurt] / 20, alpha=0.6,
               label=f'helped or unchanged ({(~hurt).sum()})')
    ax.scatter(100 * df.baseline[hurt], 100 * df.personalized[hurt], s=8 + df.tokens[hurt] / 20,
               alpha=0.6, color='tab:red', label=f'hurt ({hurt.sum()})')
    hi = 100 * max(df.baseline.max(), df.personalized.max()) * 1.05
    ax.plot([0, hi], [0, hi], 'k--', lw=1)
    ax.set(xlabel=f'non-personalized {metric} (%)', ylabel=f'personalized {metric} (%)',
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


def _grid_axes(n, width=3.2, height=2.6):
  cols = min(n, 6)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows),
                           sharex=True, sharey=True, squeeze=False)
  for ax in axes.flat[n:]:
    ax.set_visible(False)
  return fig, axes.flat


def plot_delta_vs_train_size(per_client: dict[str, pd.DataFrame], path: str) -> None:
  """One panel per run: per-client accuracy change (points) vs train examples (log x)."""
  fig, axes = _grid_axes(len(per_client))
  for ax, (name, df) in zip(axes, per_client.items()):
    hurt = reports.is_hurt(df.delta)
    ax.scatter(df.train_examples[~hurt], 100 * df.delta[~hurt], s=6, alpha=0.6)
    ax.scatter(df.train_examples[hurt], 100 * df.delta[hurt], s=6, alpha=0.6, color='tab:red')
    ax.axhline(0, color='k', lw=0.8)
    ax.set_xscale('log')
    ax.set_title(f'{name}\nhurt {hurt.mean():.0%}', fontsize=8)
  fig.supxlabel('client train examples (log scale)')
  fig.supylabel('accuracy change vs non-personalized (points)')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_delta_histograms(per_client: dict[str, pd.DataFrame], path: str) -> None:
  """One panel per run: histogram of per-client accuracy change (points)."""
  fig, axes = _grid_axes(len(per_client))
  for ax, (name, df) in zip(axes, per_client.items()):
    ax.hist(100 * df.delta, bins=30, color='tab:blue', alpha=0.8)
    ax.axvline(0, color='k', lw=0.8)
    ax.set_title(name, fontsize=8)
  fig.supxlabel('accuracy change vs non-personalized (points)')
  fig.supylabel('clients')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_accuracy_vs_parameters(table: pd.DataFrame, path: str) -> None:
  """Mean (filled) and 10th-percentile (hollow) accuracy vs personal parameters.

  `table` is `grid_lib.results_table`: columns method, state, partition,
  personal_parameters, personalized_mean, personalized_p10; the
  non-personalized row (0 parameters) is drawn as horizontal lines.
  """
  fig, ax = plt.subplots(figsize=(8, 5))
  base = table[table.personal_parameters == 0]
  rest = table[table.personal_parameters > 0]
  for _, r in base.iterrows():
    ax.axhline(100 * r.personalized_mean, color='k', lw=1, label='non-personalized mean')
    ax.axhline(100 * r.personalized_p10, color='k', lw=1, ls=':', label='non-personalized p10')
  markers = {'FedAlt': 'o', 'FedSim': 's'}
  for (method, state), g in rest.groupby(['method', 'state'], sort=False):
    label = f'{method} {state}'.strip()
    line = ax.scatter(g.personal_parameters, 100 * g.personalized_mean,
                      marker=markers.get(method, '^'), label=label)
    ax.scatter(g.personal_parameters, 100 * g.personalized_p10, marker=markers.get(method, '^'),
               facecolors='none', edgecolors=line.get_facecolor())
    for _, r in g.iterrows():
      ax.annotate(r.partition, (r.personal_parameters, 100 * r.personalized_mean),
                  fontsize=6, xytext=(3, 3), textcoords='offset points')
  ax.set_xscale('log')
  ax.set(xlabel='personal parameters per client (log scale)',
         ylabel='test accuracy (%), filled: mean, hollow: 10th percentile',
         title='Accuracy vs size of the personal part')
  ax.legend(fontsize=7, loc='best')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_training_curves(metrics: dict[str, pd.DataFrame], path: str,
                         column: str = 'train/client_work/loss') -> None:
  """Training loss (mean over the round's clients) per round, one line per run."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for name, df in metrics.items():
    if column in df:
      ax.plot(df['round'], df[column], marker='.', label=name)
  ax.set(xlabel='round', ylabel=column.rsplit('/', 1)[-1] + ' (sampled clients)',
         title='training loss per round')
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_group_personalization(per_client: pd.DataFrame, variants: list[str], path: str,
                               metric: str = 'accuracy') -> None:
  """Left: per-client CDF of each model's accuracy. Right: per-client change
  against the global model, by variant (one dot per client)."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  for variant in variants:
    values = per_client[variant].dropna().sort_values()
    left.plot(values * 100, (range(1, len(values) + 1)), label=variant.replace('_', ' + '))
  left.set(xlabel=f'test {metric} (%)', ylabel='clients at or below',
           title='per-client accuracy of each model')
  left.legend()
  others = [v for v in variants if v != 'global']
  for i, variant in enumerate(others):
    delta = (per_client[variant] - per_client['global']).dropna() * 100
    jitter = (pd.Series(range(len(delta)), index=delta.index) % 7 - 3) * 0.04
    right.scatter(i + jitter, delta, s=10, alpha=0.6,
                  c=['tab:red' if d < 0 else 'tab:blue' for d in delta])
    right.text(i, delta.max() if len(delta) else 0,
               f'hurt {int((delta < -100 * reports.TOLERANCE).sum())}/{len(delta)}',
               ha='center', va='bottom', fontsize=8)
  right.axhline(0, color='k', lw=1)
  right.set_xticks(range(len(others)), [v.replace('_', ' + ') for v in others])
  right.set(ylabel=f'{metric} change vs global (points)', title='per-client change')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
