"""Group personalization (Liu, Hui, Peng, "Group Personalized Federated
Learning", arXiv 2210.01863), on this pipeline's tasks and runs.

Stages (`run_group_personalization`), each resumable:
  1. global   FedAvg of the whole model on every client (`global/`).
  2. group    per group g, FedAvg fine-tuning from the global model on g's
              clients only (`groups/<g>/`, `--client_group`).
  3. local    per client, from its group model (and, for comparison, from the
              global model): local finetuning of `local_personalization`
              (whole model by default) on its train split, or a
              partial-personalization algorithm run on the group's clients
              with the group model as the starting shared part.
  control    (`equal_budget_control`) FedAvg of the whole model on every
              client from the global model, for as many client updates as
              the group stage made (`extra/`), then the same local stage: is
              "+ group" grouping, or just more training?
The report compares, per client and on its test split, the models
  global, global+local, global+group, global+group+local
  (and global+extra, global+extra+local with the control)
(mean, 10th percentile, helped/hurt against global) in `report/`.
"""

import dataclasses
import json
import math
import os
import re
from typing import Callable, Optional

import pandas as pd

from partial_personalization import evaluation
from partial_personalization.evaluation import plots
from partial_personalization.execution import runtime
from partial_personalization.programs import progress as progress_lib
from runners import algorithm_registry
from runners import builders_lib
from runners import config_lib
from runners import population_lib
from runners import report_lib
from runners import train_lib
from runners import weights_lib

VARIANTS = ('global', 'global_local', 'global_group', 'global_group_local')
CONTROL_VARIANTS = ('global_extra', 'global_extra_local')
LOCAL_ALGORITHMS = ('finetune',) + algorithm_registry.partial_algorithms()


@dataclasses.dataclass(frozen=True)
class GroupSettings:
  """Attributes:
    groups: `--groups` source (metadata, csv:PATH, kmeans:K).
    global_rounds, group_rounds: FedAvg rounds of stages 1 and 2.
    local_algorithm: 'finetune' or one of `algorithm_registry.partial_algorithms()`.
    local_personalization: What finetuning trains (a partition name; 'full'
      for the whole model); for an algorithm, its personal part (None: the
      task's default).
    finetune_epochs: Epochs of local finetuning.
    local_rounds: Rounds of the local algorithm (not finetune).
    min_group_clients: Groups with fewer training clients are not fine-tuned;
      their clients keep the global model as their group model.
    equal_budget_control: Also train the control (FedAvg on every client for
      the group stage's client updates) and report its two variants.
    global_model: A run directory (or .npz) to use as the global model
      instead of training stage 1, e.g. the main job's pretrained model.
  """

  groups: str = 'metadata'
  global_rounds: int = 25
  group_rounds: int = 10
  local_algorithm: str = 'finetune'
  local_personalization: Optional[str] = None
  finetune_epochs: int = 1
  local_rounds: int = 10
  min_group_clients: int = 1
  equal_budget_control: bool = True
  global_model: Optional[str] = None

  def __post_init__(self):
    if self.local_algorithm not in LOCAL_ALGORITHMS:
      raise ValueError(f'--local_algorithm must be one of {LOCAL_ALGORITHMS}, '
                       f'got {self.local_algorithm!r}')
    if min(self.global_rounds, self.group_rounds, self.finetune_epochs) < 0:
      raise ValueError('rounds and epochs must be >= 0')


def group_dir_name(group: str) -> str:
  """A file-system safe, readable name of a group."""
  return re.sub(r'[^A-Za-z0-9_.-]+', '_', group)


def _config(common: dict, name: str, **kwargs) -> config_lib.TrainConfig:
  return config_lib.TrainConfig(experiment_name=name, **{**common, **kwargs})


def _restart_runtime():
  """A fresh TFF worker per run: it keeps every computation it has seen."""
  runtime.set_executor(runtime.active_executor())


def train_global(common: dict, settings: GroupSettings) -> str:
  if settings.global_model:
    if not os.path.exists(settings.global_model):
      raise FileNotFoundError(f'--global_model {settings.global_model} does not exist: give a '
                              'run directory with a model.npz (or an .npz file)')
    return settings.global_model
  config = _config(common, 'global', algorithm='fedavg', personalization='none',
                   total_rounds=settings.global_rounds)
  train_lib.train(config)
  return config.run_dir


def _population(common: dict, settings: GroupSettings) -> tuple:
  """(probe config, task, {client: group}) of the whole population, read
  once per run and shared by the stages."""
  probe = _config(common, 'global', algorithm='fedavg', personalization='none',
                  groups=settings.groups)
  task = config_lib.create_task(probe)
  return probe, task, population_lib.client_groups(task, probe)


def _clients_per_round(common: dict, size: int) -> int:
  return min(common.get('clients_per_round', 10), int(size))


def group_stage_updates(common: dict, settings: GroupSettings, sizes: pd.Series) -> int:
  """Client updates the group stage makes: rounds x clients per round, summed
  over the groups it fine-tunes (`sizes`: training clients per group)."""
  return sum(settings.group_rounds * _clients_per_round(common, size)
             for size in sizes if size >= settings.min_group_clients)


def train_groups(common: dict, settings: GroupSettings, global_dir: str,
                 log: Callable = print, population: Optional[tuple] = None) -> dict[str, str]:
  """Stage 2; returns {group: run dir of its model} (the global one for
  groups below `min_group_clients`). `population`: `_population`'s result."""
  _, _, groups = population or _population(common, settings)
  sizes = pd.Series(groups).value_counts().sort_index()
  models = {}
  for i, (group, size) in enumerate(sizes.items(), 1):
    if size < settings.min_group_clients or not settings.group_rounds:
      models[group] = global_dir
      continue
    config = _config(common, os.path.join('groups', group_dir_name(group)),
                     algorithm='fedavg', personalization='none', groups=settings.groups,
                     client_group=group, init_from=global_dir,
                     total_rounds=settings.group_rounds,
                     clients_per_round=_clients_per_round(common, size))
    log(f'[{i}/{len(sizes)}] group {group}: {size} clients, FedAvg from the global model')
    if not os.path.exists(os.path.join(config.run_dir, 'model.npz')):
      _restart_runtime()
      train_lib.train(config)
    models[group] = config.run_dir
  return models


def train_control(common: dict, settings: GroupSettings, global_dir: str,
                  log: Callable = print, population: Optional[tuple] = None) -> str:
  """The equal-budget control: FedAvg on every client from the global model
  for at least the group stage's client updates; its run dir."""
  _, _, groups = population or _population(common, settings)
  sizes = pd.Series(groups).value_counts()
  updates = group_stage_updates(common, settings, sizes)
  per_round = common.get('clients_per_round', 10)
  config = _config(common, 'extra', algorithm='fedavg', personalization='none',
                   init_from=global_dir, total_rounds=math.ceil(updates / per_round))
  log(f'== control: FedAvg on every client from the global model, {config.total_rounds} '
      f'rounds x {per_round} clients (the group stage made {updates} client updates)')
  if not os.path.exists(os.path.join(config.run_dir, 'model.npz')):
    _restart_runtime()
    train_lib.train(config)
  return config.run_dir


def _finetune_and_evaluate(common: dict, settings: GroupSettings, model_dirs: dict,
                           assignment: dict, progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
  """Local finetuning of each client from its model; (start, finetuned) results.

  `assignment` maps client -> key of `model_dirs`. The finetuning and
  evaluation computations are built once and reused for every model.
  """
  part = settings.local_personalization or 'full'
  config = _config(common, 'global', algorithm='fedavg', personalization='none',
                   finetune_epochs=settings.finetune_epochs, finetune_personalization=part)
  task = config_lib.create_task(config, personalization=part)
  metric = task.report_metric
  finetune = builders_lib.build_finetuning(config, task, settings.finetune_epochs)
  evaluate = builders_lib.build_evaluation(task)
  start, tuned = [], []
  by_model = pd.Series(assignment).groupby(lambda c: assignment[c])
  with progress_lib.bar(total=2 * len(assignment), desc='local finetuning', unit='client',
                 disable=not progress) as bar:
    for key, clients in by_model:
      ids = sorted(clients.index)
      named = task.complete_weights_fn(weights_lib.load_init_weights(model_dirs[key]),
                                       task.partition.shapes)
      u, v0 = task.partition.split(named)
      test_sets = population_lib.eval_datasets(task, 'test', ids)
      start.append(evaluation.evaluate_clients(evaluate, u, [v0] * len(ids), test_sets, ids,
                                               metric, progress=bar.update))
      personal = [v0] * len(ids)
      if settings.finetune_epochs:
        personal = report_lib.finetune_clients(finetune, task, config, u, personal, ids)
      tuned.append(evaluation.evaluate_clients(evaluate, u, personal, test_sets, ids, metric,
                                               progress=bar.update))
  return pd.concat(start), pd.concat(tuned)


def _algorithm_local(common: dict, settings: GroupSettings, metric: str, name: str,
                     init_dir: str, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
  """A partial-personalization run from `init_dir`; (start, personalized) results."""
  config = _config(common, name, algorithm=settings.local_algorithm,
                   personalization=settings.local_personalization, init_from=init_dir,
                   baseline_model=init_dir, total_rounds=settings.local_rounds, **kwargs)
  if not os.path.exists(os.path.join(config.run_dir, 'report', 'per_client.csv')):
    _restart_runtime()
    train_lib.train(config)
  per_client = pd.read_csv(os.path.join(config.run_dir, 'report', 'per_client.csv'),
                           index_col=0)
  frame = lambda col: pd.DataFrame({metric: per_client[col], 'tokens': per_client.tokens})
  return frame('baseline'), frame('personalized')


def local_stage(common: dict, settings: GroupSettings, global_dir: str,
                group_models: dict, progress: bool = True,
                extra_dir: Optional[str] = None,
                population: Optional[tuple] = None) -> pd.DataFrame:
  """Stage 3 for every evaluation client; returns one row per client with the
  accuracy of each of `VARIANTS` (and `CONTROL_VARIANTS` from `extra_dir`),
  its group and test tokens."""
  probe, task, groups = population or _population(common, settings)
  ids = population_lib.report_client_ids(task, probe)
  metric = task.report_metric
  if settings.local_algorithm == 'finetune':
    _restart_runtime()
    base, local = _finetune_and_evaluate(common, settings, {'global': global_dir},
                                         {c: 'global' for c in ids}, progress)
    _restart_runtime()
    group_base, group_local = _finetune_and_evaluate(
        common, settings, group_models, {c: groups[c] for c in ids}, progress)
    if extra_dir:
      _restart_runtime()
      extra_base, extra_local = _finetune_and_evaluate(
          common, settings, {'extra': extra_dir}, {c: 'extra' for c in ids}, progress)
  else:
    base, local = _algorithm_local(common, settings, metric, 'local_from_global', global_dir)
    if extra_dir:
      extra_base, extra_local = _algorithm_local(common, settings, metric, 'local_from_extra',
                                                 extra_dir)
    parts = [_algorithm_local(
        common, settings, metric, os.path.join('local_from_group', group_dir_name(g)),
        group_models[g], groups=settings.groups, client_group=g,
        clients_per_round=_clients_per_round(common, sum(1 for c in groups.values() if c == g)))
             for g in sorted(set(groups[c] for c in ids))]
    group_base = pd.concat([p[0] for p in parts])
    group_local = pd.concat([p[1] for p in parts])
  table = pd.DataFrame({
      'group': pd.Series({c: groups[c] for c in ids}),
      'global': base[metric], 'global_local': local[metric],
      'global_group': group_base[metric], 'global_group_local': group_local[metric],
      **({'global_extra': extra_base[metric], 'global_extra_local': extra_local[metric]}
         if extra_dir else {}),
      'tokens': base['tokens']}).loc[ids]
  table.index.name = 'client_id'
  return table


def _variants(per_client: pd.DataFrame) -> list[str]:
  return [v for v in VARIANTS + CONTROL_VARIANTS if v in per_client]


def summarize(per_client: pd.DataFrame) -> pd.DataFrame:
  """One row per variant: clients, token-weighted mean and p10, helped/hurt vs global."""
  rows = []
  df = per_client[per_client.tokens > 0].dropna()
  for variant in _variants(per_client):
    _, s = evaluation.personalization_report(
        df[[variant, 'tokens']].rename(columns={variant: 'accuracy'}),
        df[['global', 'tokens']].rename(columns={'global': 'accuracy'}), 'accuracy')
    rows.append({'variant': variant, 'clients': s['clients'], 'mean': s['personalized_mean'],
                 'p10': s['personalized_p10'], 'helped_fraction': s['helped_fraction'],
                 'hurt_fraction': s['hurt_fraction']})
  return pd.DataFrame(rows)


def markdown(summary: pd.DataFrame) -> str:
  lines = ['| model | clients | mean | p10 | helped vs global | hurt vs global |',
           '|---|---|---|---|---|---|']
  for _, r in summary.iterrows():
    same = r.variant == 'global'
    lines.append(f"| {r.variant.replace('_', ' + ')} | {r.clients} | {r['mean']:.2%} | "
                 f"{r.p10:.2%} | {'' if same else f'{r.helped_fraction:.1%}'} | "
                 f"{'' if same else f'{r.hurt_fraction:.1%}'} |")
  return '\n'.join(lines)


def write_report(per_client: pd.DataFrame, out: str) -> tuple[pd.DataFrame, str]:
  """report/per_client.csv, summary.csv, summary.md, by_group.csv and report.png."""
  report = os.path.join(out, 'report')
  os.makedirs(report, exist_ok=True)
  per_client.to_csv(os.path.join(report, 'per_client.csv'))
  summary = summarize(per_client)
  summary.to_csv(os.path.join(report, 'summary.csv'), index=False)
  text = markdown(summary)
  with open(os.path.join(report, 'summary.md'), 'w') as f:
    f.write(text + '\n')
  weights = per_client.tokens.clip(lower=1e-9)
  variants = _variants(per_client)
  by_group = (per_client[variants].mul(weights, axis=0).groupby(per_client.group).sum()
              .div(weights.groupby(per_client.group).sum(), axis=0))
  by_group.insert(0, 'clients', per_client.groupby('group').size())
  by_group.to_csv(os.path.join(report, 'by_group.csv'))
  plots.plot_group_personalization(per_client, variants,
                                   os.path.join(report, 'report.png'))
  return summary, text


def run_group_personalization(common: dict, settings: GroupSettings,
                              log: Callable = print) -> tuple[pd.DataFrame, str]:
  """All stages under `common['root_output_dir']` (resumable); the report."""
  out = common['root_output_dir']
  log(f'== stage 1: global FedAvg, {settings.global_rounds} rounds')
  global_dir = train_global(common, settings)
  population = _population(common, settings)
  log(f'== stage 2: FedAvg per group ({settings.groups}), {settings.group_rounds} rounds each')
  group_models = train_groups(common, settings, global_dir, log, population)
  with open(os.path.join(out, 'group_models.json'), 'w') as f:
    json.dump(group_models, f, indent=2)
  extra_dir = None
  if settings.equal_budget_control:
    extra_dir = train_control(common, settings, global_dir, log, population)
  log(f'== stage 3: local {settings.local_algorithm} from the global, group'
      f'{" and extra" if extra_dir else ""} models')
  per_client = local_stage(common, settings, global_dir, group_models,
                           progress=common.get('progress', True), extra_dir=extra_dir,
                           population=population)
  return write_report(per_client, out)
