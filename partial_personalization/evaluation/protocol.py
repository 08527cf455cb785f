"""The evaluation protocol of Pillutla et al. (ICML 2022, Sec. 5), on explicit inputs.

Per client i of the report: optionally finetune v_i on the client's train
split (`finetune_clients`), test (u, v_i), test the non-personalized baseline
on the same clients (`BaselineCache` keeps its results beside the baseline
model), compare (`compare`: helped/hurt/unchanged, the weighted summaries of
`evaluation`, and the heldout-gated choice between the two models, which sees
no test data), and write the report (`write_report`). Nothing here reads flags,
a task or a run configuration: runners (`runners/report_lib.py`) build the
computations and datasets and pass them in.
"""

import json
import os
from typing import Callable, Optional, Sequence

import pandas as pd
import tensorflow_federated as tff

from partial_personalization.evaluation import reports
from partial_personalization.state import integrity

# Clients per TFF call when finetuning: bounds the datasets held at once.
FINETUNE_CHUNK = 64


def finetune_clients(finetune: tff.Computation, shared, personal: Sequence, train_sets: Sequence,
                     *, progress: Optional[Callable[[int], None]] = None) -> list:
  """Each client's v_i after `finetune` (u@SERVER, v@CLIENTS, data@CLIENTS ->
  v'@CLIENTS, `evaluation.build_personal_finetuning`).

  Args:
    shared: u, a `ModelWeights`.
    personal: v_i per client; train_sets: its train dataset, same order.
    progress: called with the number of clients done after each chunk.

  Returns:
    The finetuned v_i, a list in the order of `personal`.

  Raises:
    ValueError: `personal` and `train_sets` differ in length.
  """
  if len(personal) != len(train_sets):
    raise ValueError(f'{len(personal)} personal weights for {len(train_sets)} datasets')
  tuned = []
  for start in range(0, len(train_sets), FINETUNE_CHUNK):
    chunk = finetune(shared, personal[start:start + FINETUNE_CHUNK],
                     train_sets[start:start + FINETUNE_CHUNK])
    tuned += chunk
    if progress:
      progress(len(chunk))
  return tuned


class BaselineCache:
  """Per-split results of one baseline model, cached beside it.

  Files are `<directory>/baseline_eval_<split>_<hash>.csv`, the hash that of
  the model file, so a baseline trained further is evaluated anew; every run
  of a grid compares with the same model on the same clients. Written
  atomically (runs evaluating the same baseline at once write the same file).
  A cache without a directory or model file reads nothing and writes nothing.
  """

  def __init__(self, directory: Optional[str], model_file: Optional[str]):
    self.directory = directory
    found = directory and model_file and os.path.exists(model_file)
    self.tag = integrity.file_sha256(model_file)[:16] if found else None

  def _path(self, split: str) -> Optional[str]:
    return self.tag and os.path.join(self.directory, f'baseline_eval_{split}_{self.tag}.csv')

  def read(self, split: str, ids: Sequence[str]) -> Optional[pd.DataFrame]:
    """The cached rows of `ids`, or None unless every one is cached."""
    path = self._path(split)
    if not path or not os.path.exists(path):
      return None
    cached = pd.read_csv(path, index_col=0)
    return cached.loc[list(ids)] if set(ids) <= set(cached.index) else None

  def write(self, split: str, results: pd.DataFrame) -> None:
    path = self._path(split)
    if path:
      temp = f'{path}.tmp{os.getpid()}'
      results.to_csv(temp)
      os.replace(temp, path)


def compare(personalized: pd.DataFrame, baseline: pd.DataFrame,
            personalized_heldout: pd.DataFrame, baseline_heldout: pd.DataFrame,
            metric: str, *, byzantine: Optional[Sequence[str]] = None
            ) -> tuple[pd.DataFrame, dict]:
  """Per-client comparison of the personalized and the baseline models.

  Args:
    personalized, baseline: `reports.evaluate_clients` frames on the test
      split (index: client ids), same clients.
    personalized_heldout, baseline_heldout: the same on the heldout split
      (clients without heldout data may be missing).
    metric: The task's report metric (a column of the frames).
    byzantine: Under attack, the clients that attacked: their models do not
      count in `summary['honest']`, and `per_client.byzantine` marks them.

  Returns:
    (per_client, summary): `reports.personalization_report`'s, plus test
    losses, heldout metrics, the heldout-gated choice (`use_personalized`,
    `gated`, and `gated_*` summary keys) for each client.
  """
  per_client, summary = reports.personalization_report(personalized, baseline, metric)
  if byzantine is not None:
    byzantine = set(byzantine)
    honest = [c for c in personalized.index if c not in byzantine]
    summary['honest'] = reports.personalization_report(
        personalized.loc[honest], baseline.loc[honest], metric)[1]
    per_client['byzantine'] = per_client.index.isin(list(byzantine))
  # The inputs of the choice are kept, so anyone can check it saw no test data.
  # Test loss too: a smooth measure where an early model's accuracy is still 0.
  per_client['personalized_loss'] = personalized.loss.reindex(per_client.index)
  per_client['baseline_loss'] = baseline.loss.reindex(per_client.index)
  per_client['heldout_personalized'] = personalized_heldout[metric].reindex(per_client.index)
  per_client['heldout_baseline'] = baseline_heldout[metric].reindex(per_client.index)
  use_personalized, gated_summary = reports.gate_by_heldout(per_client)
  summary.update(gated_summary)
  per_client['use_personalized'] = use_personalized
  per_client['gated'] = per_client.personalized.where(use_personalized, per_client.baseline)
  return per_client, summary


def write_report(report_dir: str, per_client: pd.DataFrame, summary: dict) -> None:
  """`per_client.csv`, `by_participations.csv` (when `per_client` has a
  `participations` column: personalization needs training, so the effect is
  shown by how often v_i was trained) and `summary.json` in `report_dir`."""
  os.makedirs(report_dir, exist_ok=True)
  per_client.to_csv(os.path.join(report_dir, 'per_client.csv'))
  if 'participations' in per_client:
    reports.breakdown_by(per_client, 'participations', [0, 1, 2, 3]).to_csv(
        os.path.join(report_dir, 'by_participations.csv'))
  with open(os.path.join(report_dir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
