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
import os

from partial_personalization import partition as partition_lib
from runners import config_lib
from runners import train_lib


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
        rounds_per_eval=self.rounds_per_eval, eval_clients=100_000,
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
