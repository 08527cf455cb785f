"""A run's settings: `TrainConfig` (one field per runner flag), its checks,
the task and algorithm registries, and the run directory's `flags.json`.

Library code with no TFF computation in it: notebooks build a `TrainConfig`
and pass it to `train_lib.train`.
"""

import dataclasses
import inspect
import json
import math
import os
from typing import Optional

import tensorflow_federated as tff

from partial_personalization import asynchronous
from partial_personalization import byzantine
from partial_personalization import groups as groups_lib
from partial_personalization import optimizers
from partial_personalization import personalized_process
from partial_personalization import robust_aggregators
from partial_personalization import task as task_lib
from partial_personalization import training_loop
from runners import paths
from tasks import registry

# TFF's own algorithms; ours are `personalized_process.BUILDERS` (read when a
# config is checked, so an algorithm registered there is known here).
# fedrecon: TFF's `build_fed_recon` (stateless, FedAlt-style).
TFF_ALGORITHMS = ('fedavg', 'fedrecon')
# Algorithms that train whole models: their personalization is 'none'.
WHOLE_MODEL_ALGORITHMS = ('fedavg',) + personalized_process.FULL_ALGORITHMS
SERVER_LR_SCHEDULES = ('constant', 'warmup_decay')
# --client_weighting -> TFF's weighting of client updates in the mean of u.
CLIENT_WEIGHTING = {'examples': tff.learning.ClientWeighting.NUM_EXAMPLES,
                    'uniform': tff.learning.ClientWeighting.UNIFORM}
# Flags that may change when a run is resumed; all others must match.
_RESUMABLE = {'total_rounds', 'rounds_per_eval', 'rounds_per_checkpoint', 'progress'}
# Settings that are paths: given or defaulted, a relative one is resolved
# against the user's directory (`paths.resolve_path`: under `bazel run`, the
# workspace), here and nowhere else.
PATH_FIELDS = ('root_output_dir', 'cache_dir', 'init_from', 'init_checkpoint', 'baseline_model')


@dataclasses.dataclass
class TrainConfig:
  """One experiment; field names are the runner's flag names."""

  experiment_name: str
  root_output_dir: str = 'output'
  task: str = 'stackoverflow'
  cache_dir: Optional[str] = None
  algorithm: str = 'fedalt'
  personalization: Optional[str] = None
  model_size: str = 'tiny'
  adapter_size: int = 0
  dropout: float = 0.0
  vocab_size: int = 10000
  model: Optional[str] = None
  width_multiplier: float = 1.0
  heldout_fraction: float = 0.1
  gldv2_variant: str = 'gld23k'
  image_size: int = 256
  crop_size: int = 224
  client_optimizer: str = 'sgd'
  client_learning_rate: float = 0.1
  personal_learning_rate: Optional[float] = None
  server_optimizer: str = 'sgd'
  server_learning_rate: float = 1.0
  server_lr_schedule: str = 'constant'
  server_warmup_fraction: float = 0.1
  clip_norm: float = 0.0
  total_rounds: int = 10
  clients_per_round: int = 10
  client_sampling: str = 'uniform'
  client_batch_size: int = 16
  max_examples_per_client: int = 256
  tau_u: int = 1
  tau_v: int = 1
  local_unit: str = 'epochs'
  stateless: bool = False
  personal_l2: float = 0.0
  prox_strength: float = 0.1
  inner_steps: int = 5
  local_steps: int = 1
  aggregator: str = 'mean'
  trim_fraction: float = 0.1
  bucket_size: int = 1
  client_weighting: str = 'examples'
  byzantine_fraction: float = 0.0
  attack: str = 'flip'
  attack_scale: float = 1.0
  asynchronous: bool = False
  async_concurrency: int = 0
  async_delay: str = 'exponential'
  async_delay_mean: float = 1.0
  async_slow_fraction: float = 0.0
  async_slow_factor: float = 10.0
  async_delay_adaptive: bool = False
  groups: Optional[str] = None
  client_group: Optional[str] = None
  finetune_epochs: int = 0
  finetune_learning_rate: Optional[float] = None
  finetune_personalization: Optional[str] = None
  report_clients: int = 0
  rounds_per_eval: int = 0
  eval_clients: int = 32
  rounds_per_checkpoint: int = 1
  seed: int = 0
  init_from: Optional[str] = None
  init_checkpoint: Optional[str] = None
  baseline_model: Optional[str] = None
  report: bool = True
  progress: bool = True

  def __post_init__(self):
    algorithms = algorithm_names()
    if self.algorithm not in algorithms:
      raise ValueError(f'--algorithm must be one of {algorithms}, got {self.algorithm!r}')
    if self.task not in registry.TASKS:
      raise ValueError(f'--task must be one of {sorted(registry.TASKS)}, got {self.task!r}')
    self._resolve_task_defaults()
    for name in PATH_FIELDS:  # After the defaults: they resolve like given paths.
      setattr(self, name, paths.resolve_path(getattr(self, name)))
    for name in ('client_optimizer', 'server_optimizer'):
      if getattr(self, name) not in optimizers.OPTIMIZERS:
        raise ValueError(f'--{name} must be one of {sorted(optimizers.OPTIMIZERS)}')
    if self.server_lr_schedule not in SERVER_LR_SCHEDULES:
      raise ValueError(f'--server_lr_schedule must be one of {SERVER_LR_SCHEDULES}')
    if self.clip_norm < 0 or not 0 <= self.server_warmup_fraction < 1:
      raise ValueError('--clip_norm must be >= 0 and --server_warmup_fraction in [0, 1)')
    if self.algorithm in WHOLE_MODEL_ALGORITHMS and self.personalization != 'none':
      raise ValueError(
          f'--algorithm={self.algorithm} trains whole models: use --personalization=none')
    if self.stateless and self.algorithm not in personalized_process.PARTIAL_ALGORITHMS:
      raise ValueError('--stateless applies to fedalt, fedsim and ffgg (fedrecon is '
                       'stateless already)')
    personalized = self.algorithm in personalized_process.BUILDERS
    if self.local_steps != 1 and self.algorithm != 'ffgg':
      raise ValueError('--local_steps is for --algorithm=ffgg (Local FFGG)')
    if (self.byzantine_fraction or self.asynchronous) and not personalized:
      raise ValueError('--byzantine_fraction and --asynchronous need one of '
                       f'{tuple(personalized_process.BUILDERS)} (fedavg: fedsim with '
                       '--personalization=none)')
    if self.byzantine_fraction and self.asynchronous:
      raise ValueError('--byzantine_fraction is not simulated with --asynchronous; use one')
    if self.aggregator != 'mean' and self.algorithm == 'fedrecon':
      raise ValueError('--aggregator is not wired into fedrecon')
    if self.client_sampling not in training_loop.CLIENT_SAMPLING:
      raise ValueError(f'--client_sampling must be one of {training_loop.CLIENT_SAMPLING}, '
                       f'got {self.client_sampling!r}')
    if self.client_weighting not in CLIENT_WEIGHTING:
      raise ValueError(f'--client_weighting must be one of {sorted(CLIENT_WEIGHTING)}, '
                       f'got {self.client_weighting!r}')
    robust_aggregators.build_robust_aggregator(  # Checks the settings.
        self.aggregator, trim_fraction=self.trim_fraction, bucket_size=self.bucket_size)
    if self.byzantine_fraction:
      byzantine.ByzantineAttack(self.byzantine_fraction, self.attack, self.attack_scale)
    if self.asynchronous:
      asynchronous.DelayModel(self.async_delay, self.async_delay_mean,
                              self.async_slow_fraction, self.async_slow_factor)
    if self.async_concurrency < 0:
      raise ValueError('--async_concurrency must be >= 0 (0: clients_per_round)')
    if self.groups:
      groups_lib.parse_source(self.groups)
    if self.client_group is not None and not self.groups:
      raise ValueError('--client_group needs --groups (where groups come from)')
    if self.finetune_personalization and self.algorithm != 'fedavg':
      raise ValueError('--finetune_personalization is for --algorithm=fedavg (local '
                       'finetuning baseline); other runs finetune their personal part')
    for name in ('finetune_epochs', 'report_clients'):
      if getattr(self, name) < 0:
        raise ValueError(f'--{name} must be >= 0')
    for name in ('clients_per_round', 'client_batch_size', 'rounds_per_checkpoint',
                 'max_examples_per_client', 'inner_steps', 'eval_clients'):
      if getattr(self, name) < 1:
        raise ValueError(f'--{name} must be >= 1, got {getattr(self, name)}')
    for name in ('client_learning_rate', 'personal_learning_rate', 'server_learning_rate',
                 'finetune_learning_rate'):
      value = getattr(self, name)
      if value is not None and not (math.isfinite(value) and value > 0):
        raise ValueError(f'--{name} must be a finite number > 0, got {value}')
    for name in ('personal_l2', 'prox_strength', 'tau_u', 'tau_v', 'rounds_per_eval'):
      if not getattr(self, name) >= 0:  # Also refuses NaN.
        raise ValueError(f'--{name} must be >= 0, got {getattr(self, name)}')
    if not 0 <= self.seed < 2**32:
      raise ValueError(f'--seed must be in [0, 2**32), got {self.seed}')
    if not 0 <= self.dropout < 1:
      raise ValueError(f'--dropout must be in [0, 1), got {self.dropout}')
    if not 0 <= self.heldout_fraction < 1:
      raise ValueError(f'--heldout_fraction must be in [0, 1), got {self.heldout_fraction}')
    if self.total_rounds < 0:
      raise ValueError('--total_rounds must be >= 0 (0: evaluate the start model only)')

  def _resolve_task_defaults(self):
    """Fills task-dependent defaults; rejects options of another task."""
    params = inspect.signature(registry.TASKS[self.task].module.create_task).parameters
    if self.cache_dir is None:
      self.cache_dir = os.path.join('data_cache', self.task)
    if self.personalization is None:
      self.personalization = ('none' if self.algorithm in WHOLE_MODEL_ALGORITHMS
                              else params['personalization'].default)
    if self.model is None and 'model' in params:
      self.model = params['model'].default
    used = set(registry.TASKS[self.task].options.values())
    for field in dataclasses.fields(self):
      other_task = any(field.name in spec.options.values() for spec in registry.TASKS.values())
      if other_task and field.name not in used and getattr(self, field.name) != field.default:
        raise ValueError(f'--{field.name} does not apply to --task={self.task}')

  @property
  def run_dir(self) -> str:
    return os.path.join(self.root_output_dir, self.experiment_name)


def algorithm_names() -> tuple[str, ...]:
  """Every `--algorithm`: TFF's, then `personalized_process.BUILDERS`."""
  return TFF_ALGORITHMS + tuple(personalized_process.BUILDERS)


def create_task(config: TrainConfig,
                personalization: Optional[str] = None) -> task_lib.PersonalizationTask:
  """The task of `config`, with another partition if `personalization` is given."""
  options = {keyword: getattr(config, field)
             for keyword, field in registry.TASKS[config.task].options.items()}
  return registry.TASKS[config.task].module.create_task(
      config.cache_dir, personalization=personalization or config.personalization,
      dropout=config.dropout, batch_size=config.client_batch_size,
      max_elements_per_client=config.max_examples_per_client, **options)


def read_flags(path: str) -> dict:
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(
        f'{path} is unreadable ({e}): the run\'s saved settings are damaged. Restore it '
        '(it is the flags the run was started with), or start a new run with another '
        '--experiment_name. Nothing was changed.') from e
  if not isinstance(saved, dict):
    raise ValueError(f'{path} does not hold a run\'s settings; restore it or use another '
                     '--experiment_name.')
  return saved


def check_flags(config: TrainConfig) -> None:
  """The run directory's saved settings (flags.json) must match `config` where
  they are traced; a directory with saved state must have them."""
  path = os.path.join(config.run_dir, 'flags.json')
  if not os.path.exists(path):
    state = [name for name in ('client_state.sqlite', 'checkpoints', 'model.npz')
             if os.path.exists(os.path.join(config.run_dir, name))]
    if state:
      raise ValueError(
          f'{config.run_dir} holds a run ({", ".join(state)}) but no flags.json: its '
          'settings are unknown, so resuming could mix models. Restore flags.json, or '
          'start a new run with another --experiment_name. Nothing was changed.')
    return
  saved = read_flags(path)
  current = dataclasses.asdict(config)
  defaults = {f.name: f.default for f in dataclasses.fields(config)}
  # A field newer than the saved run matches if it holds its default.
  diff = {k: (saved.get(k), v) for k, v in current.items()
          if k not in _RESUMABLE and saved.get(k, defaults[k]) != v}
  if diff:
    raise ValueError(
        f'{config.run_dir} holds a run with other settings {diff} (saved, given). '
        'Resume with the same flags or choose another --experiment_name.')


def write_flags(config: TrainConfig) -> None:
  """flags.json, atomically (a crash leaves the old file or the new one)."""
  path = os.path.join(config.run_dir, 'flags.json')
  temp = f'{path}.tmp{os.getpid()}'
  with open(temp, 'w') as f:
    json.dump(dataclasses.asdict(config), f, indent=2, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temp, path)


def is_stateless(config) -> bool:
  return config.stateless or config.algorithm == 'fedrecon'


def is_full_personalization(config) -> bool:
  return config.algorithm in personalized_process.FULL_ALGORITHMS
