"""Which clients a run trains on, reports on and evaluates: `--client_group`,
`--groups`, the report sample and the evaluation datasets."""

import numpy as np

from partial_personalization.algorithms import groups as groups_lib
from partial_personalization.programs import progress as progress_lib


_GROUPS_CACHE = {}


def client_groups(task, config) -> dict[str, str]:
  """{client id: group} of every training client, from `--groups` (cached)."""
  key = (task.name, config.cache_dir, config.groups, config.seed)
  if key not in _GROUPS_CACHE:
    _GROUPS_CACHE[key] = groups_lib.load_groups(
        config.groups, sorted(task.train_data.client_ids),
        metadata_fn=task.client_groups_fn,
        histograms_fn=lambda ids: _label_histograms(task, ids), seed=config.seed)
  return _GROUPS_CACHE[key]


def _label_histograms(task, ids) -> dict:
  """Label counts of each client's train split (for k-means groups)."""
  counts = {}
  for c in progress_lib.bar(ids, desc='label histograms', unit='client'):
    labels = [np.asarray(batch[1]).ravel()
              for batch in task.eval_dataset('train', c).as_numpy_iterator()]
    counts[c] = np.bincount(np.concatenate(labels).astype(np.int64)) if labels else np.zeros(1)
  width = max(len(h) for h in counts.values())
  return {c: np.pad(h, (0, width - len(h))) for c, h in counts.items()}


def in_group(task, config, ids) -> list[str]:
  """`ids` restricted to `--client_group` (all of them without it).

  Raises:
    ValueError: the group has no client (names the groups there are).
  """
  if config.client_group is None:
    return list(ids)
  groups = client_groups(task, config)
  kept = [c for c in ids if groups.get(c) == config.client_group]
  if not kept:
    raise ValueError(f'--client_group={config.client_group!r} has no client; '
                     f'groups: {sorted(set(groups.values()))}')
  return kept


def evaluation_clients(task, config=None) -> list[str]:
  """Clients with both train and test data (in `--client_group`, if set), the
  population of the report."""
  ids = sorted(set(task.train_data.client_ids) & set(task.test_data.client_ids))
  return in_group(task, config, ids) if config else ids


def report_client_ids(task, config) -> list[str]:
  """The report's clients: all evaluation clients, or a seeded sample of
  `--report_clients` of them."""
  ids = evaluation_clients(task, config)
  if config.report_clients and config.report_clients < len(ids):
    ids = sorted(np.random.default_rng(config.seed).permutation(ids)[:config.report_clients])
  return ids


def eval_datasets(task, split, ids):
  """Evaluation datasets of `ids` from a split ('test', 'heldout')."""
  return [task.eval_dataset(split, c) for c in ids]
