"""Groups of clients for group personalization (Liu, Hui, Peng, "Group
Personalized Federated Learning", arXiv 2210.01863): global FL, then FL
fine-tuning per group from the global model, then local personalization.

`--groups` sources:
  metadata        the data's own grouping (Stack Exchange: the site of a client)
  csv:PATH        a CSV file with columns client_id,group
  kmeans:K        k-means (scipy) on the clients' label histograms, normalized,
                  for data without groups; seeded
"""

import os
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
from scipy.cluster import vq


def parse_source(source: str) -> tuple[str, str]:
  """'csv:PATH' -> ('csv', 'PATH'); 'metadata' -> ('metadata', '').

  Raises:
    ValueError: an unknown source or a bad K.
  """
  kind, _, arg = source.partition(':')
  if kind not in ('metadata', 'csv', 'kmeans') or (kind != 'metadata' and not arg):
    raise ValueError(f'`groups` must be metadata, csv:PATH or kmeans:K, got {source!r}')
  if kind == 'kmeans' and (not arg.isdigit() or int(arg) < 1):
    raise ValueError(f'`groups=kmeans:K` needs an integer K >= 1, got {arg!r}')
  return kind, arg


def read_groups_csv(path: str) -> dict[str, str]:
  """Raises FileNotFoundError / ValueError naming the file and what is wrong."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'`groups=csv:{path}`: no such file')
  table = pd.read_csv(path, dtype=str)
  if not {'client_id', 'group'} <= set(table.columns):
    raise ValueError(f'{path}: needs columns client_id,group; has {list(table.columns)}')
  duplicated = table.client_id[table.client_id.duplicated()]
  if len(duplicated):
    raise ValueError(f'{path}: clients listed twice, e.g. {duplicated.iloc[0]!r}')
  return dict(zip(table.client_id, table.group))


def kmeans_groups(histograms: dict[str, np.ndarray], k: int, seed: int) -> dict[str, str]:
  """Clusters clients by their normalized label histograms (k-means++, scipy)."""
  ids = sorted(histograms)
  if k > len(ids):
    raise ValueError(f'`groups=kmeans:{k}`: only {len(ids)} clients')
  x = np.stack([histograms[c] / max(histograms[c].sum(), 1) for c in ids]).astype(np.float64)
  _, labels = vq.kmeans2(x, k, minit='++', seed=seed)
  return {c: f'cluster{label}' for c, label in zip(ids, labels)}


def load_groups(source: str, client_ids: Sequence[str], *,
                metadata_fn: Optional[Callable[[], dict]] = None,
                histograms_fn: Optional[Callable[[Sequence[str]], dict]] = None,
                seed: int = 0) -> dict[str, str]:
  """{client id: group} for `client_ids`.

  Args:
    source: A `--groups` value (see the module docstring).
    client_ids: The clients that need a group.
    metadata_fn: The task's `client_groups_fn`.
    histograms_fn: ids -> {id: label histogram}, for kmeans.

  Raises:
    ValueError: a client without a group (names how many and one of them), a
      task without metadata groups, or a bad source.
  """
  kind, arg = parse_source(source)
  if kind == 'metadata':
    if metadata_fn is None:
      raise ValueError('this task has no metadata groups; use `groups=csv:PATH` or `groups=kmeans:K`')
    groups = metadata_fn()
  elif kind == 'csv':
    groups = read_groups_csv(arg)
  else:
    groups = kmeans_groups(histograms_fn(client_ids), int(arg), seed)
  missing = [c for c in client_ids if c not in groups]
  if missing:
    raise ValueError(f'`groups={source}`: {len(missing)} clients have no group, '
                     f'e.g. {missing[0]!r}')
  return {c: str(groups[c]) for c in client_ids}
