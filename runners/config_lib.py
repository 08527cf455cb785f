"""A run's settings: `TrainConfig` (one field per runner flag, declared once
with its help, section and properties), its checks, and the run directory's
`flags.json`.

Library code with no TFF computation in it: notebooks build a `TrainConfig`
and pass it to `train_lib.train`. What an algorithm reads and how it is built
is its `algorithm_registry` entry; what a task reads, its `tasks.registry`
entry.
"""

import dataclasses
import inspect
import json
import math
import os
from typing import Optional

import tensorflow_federated as tff

from partial_personalization.algorithms import groups as groups_lib
from partial_personalization.models import task as task_lib
from partial_personalization.programs import asynchronous
from partial_personalization.programs import byzantine
from partial_personalization.programs import training_loop
from partial_personalization.templates import optimizers
from partial_personalization.templates import robust_aggregators
from runners import algorithm_registry
from runners import paths
from tasks import registry

SERVER_LR_SCHEDULES = ('constant', 'warmup_decay')
# --client_weighting -> TFF's weighting of client updates in the mean of u.
CLIENT_WEIGHTING = {'examples': tff.learning.ClientWeighting.NUM_EXAMPLES,
                    'uniform': tff.learning.ClientWeighting.UNIFORM}

# Sections of the settings (flags.json is written in them):
#   common      every run's; task: the chosen task's options only;
#   algorithm   the chosen algorithm's only (its `AlgorithmSpec.settings`, and
#               what its evaluation reads);
#   simulation  Byzantine clients, asynchrony: only when switched on;
#   evaluation, execution: every run's.
SECTIONS = ('common', 'task', 'algorithm', 'simulation', 'evaluation', 'execution')
# Which TFF computations a setting enters (`builders_lib.memoized` keys):
#   model       all of them (the model and its data): evaluation included;
#   finetuning  the training process and the finetuning computation;
#   process     the training process only; never: none.
TRACED = ('model', 'finetuning', 'process', 'never')


def _setting(default, help_text: str, *, section: str = 'common', traced: str = 'process',
             resumable: bool = False, path: bool = False, switch: Optional[str] = None):
  """A `TrainConfig` field and its one declaration.

  Args:
    default: The flag's default (`dataclasses.MISSING`: required).
    help_text: The flag's help.
    section: One of `SECTIONS`.
    traced: One of `TRACED`.
    resumable: May change when a run is resumed (all others must match).
    path: A path: relative ones resolve against the user's directory
      (`paths.resolve_path`; under `bazel run`, the workspace).
    switch: The field that turns this one's feature on; set without it, this
      field is refused (it would be ignored).
  """
  assert section in SECTIONS and traced in TRACED, (section, traced)
  return dataclasses.field(default=default, metadata=dict(
      help=help_text, section=section, traced=traced, resumable=resumable, path=path,
      switch=switch))


@dataclasses.dataclass
class TrainConfig:
  """One experiment; field names are the runner's flag names (`_setting`)."""

  experiment_name: str = _setting(
      dataclasses.MISSING,
      'Name of the run; outputs go to <root_output_dir>/<experiment_name>.',
      traced='never')
  root_output_dir: str = _setting(
      'output',
      'Root folder of all runs.',
      traced='never', path=True)
  task: str = _setting(
      'stackoverflow',
      'stackoverflow (next word), emnist (62 characters, FEMNIST writers) or '
      'gldv2 (landmarks).',
      traced='model')
  cache_dir: Optional[str] = _setting(
      None,
      'Folder with the task data (default data_cache/<task>): '
      'stackoverflow.sqlite and .word_count; emnist_all.sqlite; gld23k/ or '
      "gld160k/ in TFF's cache layout.",
      traced='model', path=True)
  algorithm: str = _setting(
      'fedalt',
      'fedavg (TFF, non-personalized), fedalt, fedsim, ffgg (fine-tuning '
      'followed by global gradient), fedrecon (TFF build_fed_recon, '
      'stateless), ditto or pfedme (full personalization; use '
      '--personalization=none).')
  personalization: Optional[str] = _setting(
      None,
      'Which parameters are personal. stackoverflow: none, embeddings, '
      'first_block, last_block (default), decoder, adapter (needs '
      '--adapter_size), full. emnist, gldv2: none, stem, head (default), '
      'adapter, representation, full. FedAvg, Ditto, pFedMe: none.')
  model_size: str = _setting(
      'tiny',
      "stackoverflow: tiny or mini (the paper's 5.7M-parameter transformer).",
      section='task', traced='model')
  adapter_size: int = _setting(
      0,
      'stackoverflow: adapter bottleneck size (0: no adapters).',
      section='task', traced='model')
  dropout: float = _setting(
      0.0,
      'Dropout rate of the model (regularization).',
      traced='model')
  vocab_size: int = _setting(
      10000,
      'stackoverflow: vocabulary words (tokens = words + 4).',
      section='task', traced='model')
  model: Optional[str] = _setting(
      None,
      'emnist: cnn (default) or resnet18; gldv2: resnet18 (default) or '
      'mobilenet_v2.',
      section='task', traced='model')
  width_multiplier: float = _setting(
      1.0,
      'emnist, gldv2: scales every layer width (1: published sizes).',
      section='task', traced='model')
  heldout_fraction: float = _setting(
      0.1,
      "emnist, gldv2: expected fraction of each client's train examples held "
      'out (periodic evaluation, heldout gating).',
      section='task', traced='model')
  gldv2_variant: str = _setting(
      'gld23k',
      'gldv2: gld23k (233 clients, 203 classes) or gld160k (1,262, 2,028).',
      section='task', traced='model')
  image_size: int = _setting(
      256,
      'gldv2: images are resized to this side (pixels).',
      section='task', traced='model')
  crop_size: int = _setting(
      224,
      'gldv2: side of the random (train) or central (test) crop; the model '
      'input.',
      section='task', traced='model')
  client_optimizer: str = _setting(
      'sgd',
      'Local optimizer of u (and v).',
      traced='finetuning')
  client_learning_rate: float = _setting(
      0.1,
      'Local learning rate of u.',
      traced='finetuning')
  personal_learning_rate: Optional[float] = _setting(
      None,
      'Local learning rate of v (default: client_learning_rate).',
      traced='finetuning')
  server_optimizer: str = _setting(
      'sgd',
      'Server optimizer applied to the mean update of u.')
  server_learning_rate: float = _setting(
      1.0,
      'Server learning rate (peak, with a schedule).')
  server_lr_schedule: str = _setting(
      'constant',
      'constant, or warmup_decay: linear warmup over --server_warmup_fraction '
      'of --total_rounds, then linear decay to 0.')
  server_warmup_fraction: float = _setting(
      0.1,
      'Share of the rounds spent warming up (warmup_decay).')
  clip_norm: float = _setting(
      0.0,
      "Clip each local step's gradient to this global norm, separately for u "
      'and v (0: no clipping; the reference code uses 0.25).',
      traced='finetuning')
  total_rounds: int = _setting(
      10,
      'Number of rounds (0: only evaluate the start model, e.g. with '
      'finetuning).',
      resumable=True)
  clients_per_round: int = _setting(
      10,
      'Clients sampled per round (m).',
      traced='never')
  client_sampling: str = _setting(
      'uniform',
      'uniform (a uniform sample each round) or balanced (the clients that '
      'participated least so far: every client trains R * m / n times).',
      traced='never')
  client_batch_size: int = _setting(
      16,
      'Local batch size.',
      traced='model')
  max_examples_per_client: int = _setting(
      256,
      'Cap on examples a client uses per round.',
      traced='model')
  tau_u: int = _setting(
      1,
      'Local epochs/steps on the shared part u.',
      section='algorithm')
  tau_v: int = _setting(
      1,
      'Local epochs/steps on the personal part v (FedAlt); ffgg: full-batch '
      'fine-tuning steps (Algorithm 2).',
      section='algorithm')
  local_unit: str = _setting(
      'epochs',
      'Unit of tau_u and tau_v: epochs or steps.',
      section='algorithm', traced='finetuning')
  stateless: bool = _setting(
      False,
      'FedAlt/FedSim with v_i reset to v_0 at every participation (FedRecon '
      'setting); evaluation reconstructs v_i on the train split first.',
      section='algorithm')
  personal_l2: float = _setting(
      0.0,
      'Weight decay of the personal part in FedAlt/FedSim.',
      section='algorithm', traced='finetuning')
  prox_strength: float = _setting(
      0.1,
      'lambda of Ditto and pFedMe (pull toward the global model).',
      section='algorithm')
  inner_steps: int = _setting(
      5,
      'pFedMe inner steps K per batch.',
      section='algorithm')
  local_steps: int = _setting(
      1,
      'ffgg: full-batch steps on u per round (1: FFGG, > 1: Local FFGG, '
      'Mishchenko et al. Algorithm 4).',
      section='algorithm')
  aggregator: str = _setting(
      'mean',
      'Aggregation of the u updates: mean (example-weighted), median '
      '(coordinate-wise) or trimmed_mean (Byzantine-robust).')
  trim_fraction: float = _setting(
      0.1,
      'trimmed_mean: fraction trimmed at each end, in [0, 0.5).')
  bucket_size: int = _setting(
      1,
      'Bucketing before the aggregator: shuffle, average buckets of this many '
      'updates (1: none).')
  client_weighting: str = _setting(
      'examples',
      "Weight of each client's u update in the mean: examples (its example "
      "count, as FedAvg) or uniform (1 each, as FFGG's 1/n sum).")
  byzantine_fraction: float = _setting(
      0.0,
      'Simulated attack: fraction of the training clients that are Byzantine '
      '(a fixed, seeded set); 0: none.',
      section='simulation', traced='never')
  attack: str = _setting(
      'flip',
      'What Byzantine clients send: flip (-attack_scale * update) or noise '
      '(Gaussian, std attack_scale).',
      section='simulation', traced='never', switch='byzantine_fraction')
  attack_scale: float = _setting(
      1.0,
      'Scale of the attack.',
      section='simulation', traced='never', switch='byzantine_fraction')
  asynchronous: bool = _setting(
      False,
      'Simulated asynchronous training: the server applies each update as it '
      'arrives, computed from a stale u (Mishchenko et al. Algorithm 3).',
      section='simulation')
  async_concurrency: int = _setting(
      0,
      'Clients in flight (0: clients_per_round).',
      section='simulation', traced='never', switch='asynchronous')
  async_delay: str = _setting(
      'exponential',
      'Delay distribution: exponential, uniform (0 to 2 x mean) or constant.',
      section='simulation', traced='never', switch='asynchronous')
  async_delay_mean: float = _setting(
      1.0,
      'Mean delay (simulated time units).',
      section='simulation', traced='never', switch='asynchronous')
  async_slow_fraction: float = _setting(
      0.0,
      'Fraction of clients that are slow (fixed, seeded set).',
      section='simulation', traced='never', switch='asynchronous')
  async_slow_factor: float = _setting(
      10.0,
      'Delay multiplier of slow clients.',
      section='simulation', traced='never', switch='asynchronous')
  async_delay_adaptive: bool = _setting(
      False,
      'Scale each update by min(1, concurrency / staleness).',
      section='simulation', traced='never', switch='asynchronous')
  groups: Optional[str] = _setting(
      None,
      'Client groups: metadata (stackoverflow: the site), csv:PATH '
      '(client_id,group) or kmeans:K (label histograms).',
      traced='never')
  client_group: Optional[str] = _setting(
      None,
      "Train and report only this group's clients (group fine-tuning).",
      traced='never')
  finetune_epochs: int = _setting(
      0,
      "Before testing, finetune each client's personal part for this many "
      'epochs on its train split (0: none; stateless runs default to tau_v).',
      section='evaluation', traced='never')
  finetune_learning_rate: Optional[float] = _setting(
      None,
      'Learning rate of that finetuning (default: personal_learning_rate).',
      section='evaluation', traced='never')
  finetune_personalization: Optional[str] = _setting(
      None,
      'With --algorithm=fedavg: the part finetuned at evaluation (local '
      'finetuning baseline; default full).',
      section='algorithm', traced='never')
  report_clients: int = _setting(
      0,
      'Clients in the final report (0: all with train and test data; else a '
      'seeded sample).',
      section='evaluation', traced='never')
  rounds_per_eval: int = _setting(
      0,
      'Evaluate on heldout data every k rounds (0: never).',
      section='evaluation', traced='never', resumable=True)
  eval_clients: int = _setting(
      32,
      'Clients in the periodic heldout evaluation.',
      section='evaluation', traced='never')
  rounds_per_checkpoint: int = _setting(
      1,
      'Commit (checkpoint) every k rounds.',
      section='execution', traced='never', resumable=True)
  seed: int = _setting(
      0,
      'Seed of initialization, client sampling and shuffles.')
  init_from: Optional[str] = _setting(
      None,
      "Start from this run directory's model.npz (e.g. FedAvg pretraining).",
      traced='never', path=True)
  init_checkpoint: Optional[str] = _setting(
      None,
      'Pretrained weights (.npz of named weights or Keras .h5) loaded where '
      'name and shape match, e.g. a backbone; default: from scratch.',
      traced='never', path=True)
  baseline_model: Optional[str] = _setting(
      None,
      'Non-personalized model (run dir or .npz) for the report; default: the '
      'start model.',
      section='evaluation', traced='never', path=True)
  report: bool = _setting(
      True,
      'Write the per-client report at the end (personalized runs).',
      section='evaluation', traced='never')
  progress: bool = _setting(
      True,
      'Show progress bars.',
      section='execution', traced='never', resumable=True)

  def __post_init__(self):
    spec = algorithm_registry.spec(self.algorithm)
    if self.task not in registry.TASKS:
      raise ValueError(f'--task must be one of {sorted(registry.TASKS)}, got {self.task!r}')
    self._resolve_task_defaults()
    for name in PATH_FIELDS:  # After the defaults: they resolve like given paths.
      setattr(self, name, paths.resolve_path(getattr(self, name)))
    self._refuse_unread()
    for name in ('client_optimizer', 'server_optimizer'):
      if getattr(self, name) not in optimizers.OPTIMIZERS:
        raise ValueError(f'--{name} must be one of {sorted(optimizers.OPTIMIZERS)}')
    if self.server_lr_schedule not in SERVER_LR_SCHEDULES:
      raise ValueError(f'--server_lr_schedule must be one of {SERVER_LR_SCHEDULES}')
    if self.clip_norm < 0 or not 0 <= self.server_warmup_fraction < 1:
      raise ValueError('--clip_norm must be >= 0 and --server_warmup_fraction in [0, 1)')
    if spec.trains_whole_models and self.personalization != 'none':
      raise ValueError(
          f'--algorithm={self.algorithm} trains whole models: use --personalization=none')
    if (self.byzantine_fraction or self.asynchronous) and spec.tff_process:
      raise ValueError('--byzantine_fraction and --asynchronous need one of '
                       f'{algorithm_registry.personalized_processes()} (fedavg: fedsim with '
                       '--personalization=none)')
    if self.byzantine_fraction and self.asynchronous:
      raise ValueError('--byzantine_fraction is not simulated with --asynchronous; use one')
    if self.aggregator != 'mean' and not spec.robust_aggregation:
      raise ValueError(f'--aggregator is not wired into {self.algorithm}')
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
    """Fills task-dependent defaults."""
    params = inspect.signature(registry.TASKS[self.task].module.create_task).parameters
    if self.cache_dir is None:
      self.cache_dir = os.path.join('data_cache', self.task)
    if self.personalization is None:
      self.personalization = ('none' if self.spec.trains_whole_models
                              else params['personalization'].default)
    if self.model is None and 'model' in params:
      self.model = params['model'].default

  def _refuse_unread(self):
    """Refuses, in one line, a setting this run would ignore (`_ignored`)."""
    read = self.algorithm_fields()
    for field in dataclasses.fields(self):
      if getattr(self, field.name) != field.default:
        why = self._ignored(field, read)
        if why:
          raise ValueError(why)

  def _ignored(self, field: dataclasses.Field, read: set[str]) -> Optional[str]:
    """Why this run ignores `field` (the error if it is set), or None if it
    reads it: another task's option, another algorithm's setting
    (`read`: `algorithm_fields()`), a simulation's setting while it is off."""
    meta = field.metadata
    if meta['section'] == 'task' and field.name not in registry.TASKS[self.task].options.values():
      return f'--{field.name} does not apply to --task={self.task}'
    if meta['section'] == 'algorithm' and field.name not in read:
      own = sorted(name for name in read if _FIELDS[name].metadata['section'] == 'algorithm')
      uses = (f'its settings: {", ".join(f"--{name}" for name in own)}' if own
              else 'it has no settings of its own')
      return f'--{field.name} does not apply to --algorithm={self.algorithm} ({uses})'
    switch = meta['switch'] or (field.name if meta['section'] == 'simulation' else None)
    if switch and getattr(self, switch) == _DEFAULTS[switch]:
      return f'--{field.name} applies only with --{switch}'
    return None

  def algorithm_fields(self) -> set[str]:
    """The settings of the 'algorithm' section this run reads: its algorithm's
    (`AlgorithmSpec.settings`, `--stateless` where optional,
    `--finetune_personalization` for a non-personalized model) and those of
    its finetuning before testing (`--local_unit`, `--personal_l2`; stateless
    runs reconstruct for `--tau_v` epochs unless `--finetune_epochs` is set)."""
    spec = self.spec
    read = set(spec.settings.values())
    if spec.stateless == 'optional':
      read.add('stateless')
    if spec.personal == algorithm_registry.NOT_PERSONALIZED:
      read.add('finetune_personalization')
    stateless = spec.stateless == 'always' or (self.stateless and spec.stateless == 'optional')
    if self.finetune_epochs or stateless:
      read.update(('local_unit', 'personal_l2'))
    if stateless and not self.finetune_epochs:
      read.add('tau_v')
    return read

  def sections(self) -> dict[str, dict]:
    """The settings by section (`SECTIONS`), without those this run does not
    read: other tasks' options, other algorithms' settings, simulations not
    switched on. What flags.json holds."""
    read = self.algorithm_fields()
    out = {section: {} for section in SECTIONS}
    for field in dataclasses.fields(self):
      if self._ignored(field, read) is None:
        out[field.metadata['section']][field.name] = getattr(self, field.name)
    return {section: values for section, values in out.items() if values}

  @property
  def spec(self) -> algorithm_registry.AlgorithmSpec:
    """The `--algorithm`'s registry entry."""
    return algorithm_registry.ALGORITHMS[self.algorithm]

  @property
  def run_dir(self) -> str:
    return os.path.join(self.root_output_dir, self.experiment_name)


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_DEFAULTS = {name: f.default for name, f in _FIELDS.items()}


def fields_where(**properties) -> tuple[str, ...]:
  """`TrainConfig` fields whose declaration has these properties, in order,
  e.g. `fields_where(path=True)`, `fields_where(traced='never')`."""
  return tuple(name for name, f in _FIELDS.items()
               if all(f.metadata[k] == v for k, v in properties.items()))


PATH_FIELDS = fields_where(path=True)
_RESUMABLE = frozenset(fields_where(resumable=True))


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
  """A run's saved settings, flat (field -> value), from either form of
  flags.json: by section (`TrainConfig.sections`) or flat (older runs).
  ValueError, naming the file, if it is damaged."""
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
  if saved and set(saved) <= set(SECTIONS) and all(isinstance(v, dict) for v in saved.values()):
    return {k: v for section in saved.values() for k, v in section.items()}
  return saved  # The flat form of runs started before the sections.


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
  # A field the saved run did not write (newer than the run, or one it does
  # not read) matches if it holds its default. Algorithm settings this run
  # does not read are not compared: an older flat flags.json holds every
  # algorithm's, and its run ignored them too.
  read = config.algorithm_fields()
  diff = {k: (saved.get(k), v) for k, v in current.items()
          if k not in _RESUMABLE and saved.get(k, _DEFAULTS[k]) != v
          and (_FIELDS[k].metadata['section'] != 'algorithm' or k in read)}
  if diff:
    raise ValueError(
        f'{config.run_dir} holds a run with other settings {diff} (saved, given). '
        'Resume with the same flags or choose another --experiment_name.')


def write_flags(config: TrainConfig) -> None:
  """flags.json, atomically (a crash leaves the old file or the new one)."""
  path = os.path.join(config.run_dir, 'flags.json')
  temp = f'{path}.tmp{os.getpid()}'
  with open(temp, 'w') as f:
    json.dump(config.sections(), f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(temp, path)


def is_stateless(config) -> bool:
  """v_i restarts from v_0 at every participation (`--stateless`, FedRecon)."""
  return config.stateless or config.spec.stateless == 'always'
