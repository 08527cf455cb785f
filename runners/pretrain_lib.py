"""The stored global model: FedAvg pretraining on every client of one
conversion of the Stack Exchange dumps, snapshots along the way, and the
exported model with its manifest.

The paper (Pillutla et al. 2022, Sec. 5) starts every personalization run from
a global model pretrained with FedAvg (1000 rounds on StackOverflow); the
main job does the same from the model this stage writes to
`pretrained/<name>/` (`model.npz`, `manifest.json`).

Layout of the pretraining folder (`--output_dir`, default `output/pretrain`):
  data/                  the conversion (stackoverflow.sqlite, .word_count)
  fedavg/                the run directory (resumable, see train_lib)
  fedavg/snapshots/      model_round<NNNN>.npz at every heldout evaluation
"""

import dataclasses
import json
import os
import shutil
import subprocess
from typing import Optional

import pandas as pd

from partial_personalization.models import partition as partition_lib
from partial_personalization.state import integrity
from runners import config_lib
from runners import train_lib
from tasks.stackoverflow import convert_lib

# Where the stored model lives in the repository (relative to its root).
STORED_MODEL_DIR = 'pretrained/stackoverflow_tiny'
MANIFEST_FILENAME = 'manifest.json'
MODEL_FILENAME = 'model.npz'


@dataclasses.dataclass(frozen=True)
class PretrainRecipe:
  """FedAvg pretraining settings (docs/results.md, "The stored global model").

  Local Adam restarted each round, a few clients per round with much local
  work, and a server learning rate decaying linearly to 0 over `rounds` (the
  recipe chosen on heldout data in docs/results.md).
  """
  rounds: int = 800
  clients_per_round: int = 4
  client_learning_rate: float = 0.003
  max_examples_per_client: int = 512
  rounds_per_eval: int = 50
  model_size: str = 'tiny'
  seed: int = 0
  # Clients of each heldout evaluation (a seeded sample when fewer than the
  # population): at the paper's 342k clients, all of them would cost more
  # than the training.
  eval_clients: int = 100_000

  def train_config(self, output_dir: str, *, progress: bool = True) -> config_lib.TrainConfig:
    return config_lib.TrainConfig(
        experiment_name='fedavg', root_output_dir=output_dir,
        cache_dir=os.path.join(output_dir, 'data'), algorithm='fedavg',
        personalization='none', model_size=self.model_size, client_optimizer='adam',
        client_learning_rate=self.client_learning_rate, server_optimizer='sgd',
        server_learning_rate=1.0, server_lr_schedule='warmup_decay',
        server_warmup_fraction=0.0, total_rounds=self.rounds,
        clients_per_round=self.clients_per_round,
        max_examples_per_client=self.max_examples_per_client,
        rounds_per_eval=self.rounds_per_eval, eval_clients=self.eval_clients,
        rounds_per_checkpoint=10, seed=self.seed, report=False, progress=progress)


def snapshot_path(run_dir: str, round_num: int) -> str:
  return os.path.join(run_dir, 'snapshots', f'model_round{round_num:04d}.npz')


def pretrain(recipe: PretrainRecipe, output_dir: str, *, progress: bool = True) -> dict:
  """Runs or resumes the pretraining in `<output_dir>/fedavg` (data must be
  converted into `<output_dir>/data` first); returns `train_lib.train`'s dict."""
  config = recipe.train_config(output_dir, progress=progress)

  def keep_snapshot(round_num, named_weights, metrics):
    del metrics  # In metrics.csv.
    path = snapshot_path(config.run_dir, round_num)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partition_lib.save_named_weights(path, named_weights)

  return train_lib.train(config, on_eval=keep_snapshot)


class StoredModelError(ValueError):
  """The stored global model is missing, damaged, or was made from other data."""


def data_files(data_dir: str) -> list[str]:
  """The converted data a model depends on (the task's `data_files`)."""
  return [os.path.join(data_dir, name)
          for name in (convert_lib.DATABASE_FILENAME, convert_lib.WORD_COUNT_FILENAME)]


def _commit() -> Optional[str]:
  try:
    return subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
                          check=True, cwd=os.path.dirname(os.path.abspath(__file__))
                          ).stdout.strip() or None
  except (OSError, subprocess.CalledProcessError):
    return None


def export(recipe: PretrainRecipe, output_dir: str, export_dir: str, *, command: str) -> dict:
  """Copies the finished pretraining's model to `export_dir` with its manifest.

  The manifest records how to make the model again and what it was made
  from: the command, the commit, the recipe, the conversion's record (dumps'
  sha256, `min_examples`), the sha256 of the converted data and of the
  vocabulary, and the heldout curve (every evaluation of the run).

  Raises:
    StoredModelError: the pretraining has not finished.
  """
  config = recipe.train_config(output_dir)
  metrics = pd.read_csv(os.path.join(config.run_dir, 'metrics.csv'))
  model = os.path.join(config.run_dir, MODEL_FILENAME)
  if metrics['round'].max() < recipe.rounds or not os.path.exists(model):
    raise StoredModelError(f'{config.run_dir} has not finished its {recipe.rounds} rounds; '
                           'run the pretraining again to resume it.')
  curve = metrics.dropna(subset=['eval/heldout_accuracy']).drop_duplicates('round', keep='last')
  named = partition_lib.load_named_weights(model)
  manifest = {
      'model': MODEL_FILENAME,
      'model_sha256': integrity.file_sha256(model),
      'parameters': int(sum(w.size for w in named.values())),
      'command': command,
      'commit': _commit(),
      'recipe': dataclasses.asdict(recipe),
      'data': {
          'sha256': integrity.files_sha256(data_files(config.cache_dir)),
          'vocabulary_sha256': integrity.file_sha256(
              os.path.join(config.cache_dir, convert_lib.WORD_COUNT_FILENAME)),
          'conversion': convert_lib.read_record(config.cache_dir),
      },
      'rounds': recipe.rounds,
      'heldout': [{'round': int(r['round']), 'accuracy': float(r['eval/heldout_accuracy']),
                   'loss': float(r['eval/heldout_loss'])} for _, r in curve.iterrows()],
  }
  os.makedirs(export_dir, exist_ok=True)
  shutil.copyfile(model, os.path.join(export_dir, MODEL_FILENAME + '.partial'))
  os.replace(os.path.join(export_dir, MODEL_FILENAME + '.partial'),
             os.path.join(export_dir, MODEL_FILENAME))
  with open(os.path.join(export_dir, MANIFEST_FILENAME + '.partial'), 'w') as f:
    json.dump(manifest, f, indent=2)
  os.replace(os.path.join(export_dir, MANIFEST_FILENAME + '.partial'),
             os.path.join(export_dir, MANIFEST_FILENAME))
  return manifest


def read_manifest(stored_dir: str) -> dict:
  path = os.path.join(stored_dir, MANIFEST_FILENAME)
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise StoredModelError(
        f'{path}: {e}. The stored global model needs its manifest; restore it (git checkout '
        f'{STORED_MODEL_DIR}) or make it anew: bazel run //runners:pretrain') from e


def rebuild_command(manifest: dict) -> str:
  record = manifest.get('data', {}).get('conversion') or {}
  min_examples = record.get('min_examples', "<the job's>")
  return ('bazel run //runners:pretrain -- --dump_dirs=<the dumps of the job> '
          f'--min_examples={min_examples}')


def stored_model(stored_dir: str, data_dir: str) -> str:
  """The stored model's file, after checking it against `data_dir`.

  Returns:
    The path of `model.npz`.

  Raises:
    StoredModelError: the manifest or model is missing or damaged (its sha256
      differs from the manifest's), or the model was pretrained on other
      converted data than `data_dir` holds (the message names the command
      that makes a model for that data).
  """
  manifest = read_manifest(stored_dir)
  model = os.path.join(stored_dir, manifest.get('model', MODEL_FILENAME))
  if not os.path.exists(model) or integrity.file_sha256(model) != manifest.get('model_sha256'):
    raise StoredModelError(
        f'{model} is missing or not the model its manifest names (sha256 differs): restore '
        f'it (git checkout {STORED_MODEL_DIR}) or make it anew: {rebuild_command(manifest)}')
  have = integrity.files_sha256(data_files(data_dir))
  want = manifest['data']['sha256']
  if have != want:
    made_from = manifest['data'].get('conversion') or {}
    here = convert_lib.read_record(data_dir) or {}
    raise StoredModelError(
        f'the stored global model {stored_dir} was pretrained on other data than {data_dir} '
        f"(its data sha256 {want[:12]}, converted with min_examples="
        f"{made_from.get('min_examples')} from {len(made_from.get('sites', {}))} sites; here "
        f"{have[:12]}, min_examples={here.get('min_examples')} from "
        f"{len(here.get('sites', {}))} sites). Pretrain a model for this data: "
        f'{rebuild_command(manifest)}, or pass `pretrain_rounds`=N to pretrain in the job.')
  return model
