"""Library behind `runners/train.py`: one experiment from a `TrainConfig`.

`train(config)` builds the task and the process (TFF's FedAvg, or our FedAlt /
FedSim), runs or resumes training in `<root_output_dir>/<experiment_name>`,
exports the final global model to `model.npz`, and for personalized runs
writes the per-client report (`report/`) against a non-personalized model.
No flags are parsed here, so notebooks can import and call it.
"""

import dataclasses
import json
import os
from typing import Optional

from absl import logging
import numpy as np
import tensorflow_federated as tff
import tqdm

from partial_personalization import client_state
from partial_personalization import evaluation
from partial_personalization import partition as partition_lib
from partial_personalization import personalized_process
from partial_personalization import task as task_lib
from partial_personalization import training_loop
from tasks.stackoverflow import task as stackoverflow_task

ALGORITHMS = ('fedavg', 'fedalt', 'fedsim')
TASKS = {'stackoverflow': stackoverflow_task}
OPTIMIZERS = {
    'sgd': lambda lr: tff.learning.optimizers.build_sgdm(learning_rate=lr),
    'sgdm': lambda lr: tff.learning.optimizers.build_sgdm(learning_rate=lr, momentum=0.9),
    'adam': lambda lr: tff.learning.optimizers.build_adam(learning_rate=lr),
    'adagrad': lambda lr: tff.learning.optimizers.build_adagrad(learning_rate=lr),
    'yogi': lambda lr: tff.learning.optimizers.build_yogi(learning_rate=lr),
}
# Flags that may change when a run is resumed; all others must match.
_RESUMABLE = {'total_rounds', 'rounds_per_eval', 'rounds_per_checkpoint', 'progress'}


@dataclasses.dataclass
class TrainConfig:
  """One experiment; field names are the runner's flag names."""

  experiment_name: str
  root_output_dir: str = 'output'
  task: str = 'stackoverflow'
  cache_dir: str = 'data_cache/stackoverflow'
  algorithm: str = 'fedalt'
  personalization: str = 'last_block'
  model_size: str = 'tiny'
  adapter_size: int = 0
  vocab_size: int = 10000
  client_optimizer: str = 'sgd'
  client_learning_rate: float = 0.1
  personal_learning_rate: Optional[float] = None
  server_optimizer: str = 'sgd'
  server_learning_rate: float = 1.0
  total_rounds: int = 10
  clients_per_round: int = 10
  client_batch_size: int = 16
  max_examples_per_client: int = 256
  tau_u: int = 1
  tau_v: int = 1
  local_unit: str = 'epochs'
  rounds_per_eval: int = 0
  eval_clients: int = 32
  rounds_per_checkpoint: int = 1
  seed: int = 0
  init_from: Optional[str] = None
  baseline_model: Optional[str] = None
  report: bool = True
  progress: bool = True

  def __post_init__(self):
    if self.algorithm not in ALGORITHMS:
      raise ValueError(f'--algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}')
    if self.task not in TASKS:
      raise ValueError(f'--task must be one of {sorted(TASKS)}, got {self.task!r}')
    for name in ('client_optimizer', 'server_optimizer'):
      if getattr(self, name) not in OPTIMIZERS:
        raise ValueError(f'--{name} must be one of {sorted(OPTIMIZERS)}')
    if self.algorithm == 'fedavg' and self.personalization != 'none':
      raise ValueError("--algorithm=fedavg trains one global model: use --personalization=none")
    for name in ('total_rounds', 'clients_per_round', 'client_batch_size', 'rounds_per_checkpoint'):
      if getattr(self, name) < 1:
        raise ValueError(f'--{name} must be >= 1')

  @property
  def run_dir(self) -> str:
    return os.path.join(self.root_output_dir, self.experiment_name)


def create_task(config: TrainConfig) -> task_lib.PersonalizationTask:
  return TASKS[config.task].create_task(
      config.cache_dir, model_size=config.model_size,
      personalization=config.personalization, adapter_size=config.adapter_size,
      vocab_size=config.vocab_size, batch_size=config.client_batch_size,
      max_elements_per_client=config.max_examples_per_client)


def _check_or_write_flags(config: TrainConfig) -> None:
  path = os.path.join(config.run_dir, 'flags.json')
  current = dataclasses.asdict(config)
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    diff = {k: (saved.get(k), v) for k, v in current.items()
            if k not in _RESUMABLE and saved.get(k) != v}
    if diff:
      raise ValueError(
          f'{config.run_dir} holds a run with other settings {diff} (saved, given). '
          'Resume with the same flags or choose another --experiment_name.')
  os.makedirs(config.run_dir, exist_ok=True)
  with open(path, 'w') as f:
    json.dump(current, f, indent=2, sort_keys=True)


def load_init_weights(init_from: str) -> dict:
  """`--init_from`: a run directory (its model.npz) or an .npz file."""
  path = os.path.join(init_from, 'model.npz') if os.path.isdir(init_from) else init_from
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'--init_from={init_from}: {path} not found. Point it at a finished '
        'run directory (e.g. a FedAvg pretraining run) or its model.npz.')
  return partition_lib.load_named_weights(path)


def initial_named_weights(task, config) -> dict:
  """Seeded fresh weights, overridden by `--init_from` where names match."""
  named = task.initial_weights(config.seed)
  if config.init_from:
    loaded = task.complete_weights_fn(load_init_weights(config.init_from), task.partition.shapes)
    for name, value in loaded.items():
      if name in named and named[name].shape != value.shape:
        raise ValueError(
            f'--init_from: {name} has shape {value.shape}, the model needs '
            f'{named[name].shape}; use the same --model_size and --vocab_size.')
    fresh = sorted(set(named) - set(loaded))
    if fresh:
      logging.info('Variables not in --init_from, freshly initialized: %s', fresh)
    named.update({k: v for k, v in loaded.items() if k in named})
  return named


def _build_runner(config, task, named_init, store):
  client_opt = OPTIMIZERS[config.client_optimizer](config.client_learning_rate)
  server_opt = OPTIMIZERS[config.server_optimizer](config.server_learning_rate)
  shared, _ = task.partition.split(named_init)
  if config.algorithm == 'fedavg':
    process = tff.learning.algorithms.build_weighted_fed_avg(
        task.variable_model_fn, client_optimizer_fn=client_opt,
        server_optimizer_fn=server_opt)
    return training_loop.FedAvgRunner(process, initial_weights=shared)
  personal_opt = OPTIMIZERS[config.client_optimizer](
      config.personal_learning_rate or config.client_learning_rate)
  process = personalized_process.build_personalized_process(
      task.reconstruction_model_fn, loss_fn=task.loss_fn, metrics_fn=task.metrics_fn,
      algorithm=config.algorithm, client_optimizer=client_opt,
      personal_optimizer=personal_opt, server_optimizer=server_opt,
      tau_u=config.tau_u, tau_v=config.tau_v, local_unit=config.local_unit)
  return training_loop.PersonalizedRunner(process, store, initial_shared=shared)


def evaluation_clients(task) -> list[str]:
  """Clients with both train and test data, the population of the report."""
  return sorted(set(task.train_data.client_ids) & set(task.test_data.client_ids))


def train(config: TrainConfig) -> dict:
  """Runs or resumes one experiment.

  Returns:
    dict: run_dir, summary (report summary or None), rounds_run, seconds,
    shared_parameters, personal_parameters.

  Raises:
    ValueError: bad or conflicting settings (message names the flag).
    FileNotFoundError: missing data or `--init_from` model.
    training_loop.CheckpointError, client_state.ClientStateError: unusable
      saved state (nothing is deleted).
  """
  task = create_task(config)
  _check_or_write_flags(config)
  named_init = initial_named_weights(task, config)
  _, initial_personal = task.partition.split(named_init)
  store = client_state.ClientStateStore(
      os.path.join(config.run_dir, 'client_state.sqlite'), initial_personal)
  runner = _build_runner(config, task, named_init, store)
  shared_n, personal_n = task.partition.num_parameters()
  logging.info('%s/%s: %d shared and %d personal parameters',
               config.algorithm, config.personalization, shared_n, personal_n)

  if isinstance(runner, training_loop.PersonalizedRunner):
    evaluate = runner.process.evaluate  # Built with the process; no second trace.
  else:
    evaluate = personalized_process.build_personalized_evaluation(
        task.reconstruction_model_fn, loss_fn=task.loss_fn, metrics_fn=task.metrics_fn)
  metric = task.report_metric
  heldout_ids = set(task.heldout_data.client_ids)
  eval_ids = [c for c in evaluation_clients(task) if c in heldout_ids]
  eval_ids = sorted(np.random.default_rng(config.seed).permutation(eval_ids)[:config.eval_clients])
  eval_sets = None

  def eval_fn(state, round_num):
    nonlocal eval_sets
    if eval_sets is None:
      eval_sets = [task.eval_preprocess_fn(task.heldout_data.create_tf_dataset_for_client(c))
                   for c in eval_ids]
    # FedAvg's weights are in Keras order, which is u's order for 'none'.
    u = runner.global_weights(state)
    v = store.read(eval_ids, before_round=round_num + 1)
    df = evaluation.evaluate_clients(evaluate, u, v, eval_sets, eval_ids, metric)
    return {f'heldout_{metric}': float(np.average(df[metric], weights=df.tokens)),
            'heldout_loss': float(np.average(df.loss, weights=df.tokens))}

  train_ids = sorted(task.train_data.client_ids)
  result = training_loop.run_training(
      runner, run_dir=config.run_dir, store=store, client_ids=train_ids,
      make_dataset=lambda cid, s: task.train_preprocess_fn(
          task.train_data.create_tf_dataset_for_client(cid), s),
      total_rounds=config.total_rounds, clients_per_round=config.clients_per_round,
      seed=config.seed, rounds_per_checkpoint=config.rounds_per_checkpoint,
      rounds_per_eval=config.rounds_per_eval, eval_fn=eval_fn, progress=config.progress)
  final_shared = runner.global_weights(result.state)
  partition_lib.save_named_weights(
      os.path.join(config.run_dir, 'model.npz'),
      task.partition.merge(final_shared, store.initial))
  summary = None
  if config.report and config.algorithm != 'fedavg':
    summary = write_report(config, task, evaluate, final_shared, store, named_init)
  store.close()
  return {'run_dir': config.run_dir, 'summary': summary,
          'rounds_run': result.rounds_run, 'seconds': result.seconds,
          'shared_parameters': shared_n, 'personal_parameters': personal_n}


def write_report(config, task, evaluate, shared, store, start_weights) -> dict:
  """Per-client test accuracy, personalized vs the non-personalized model.

  The baseline is `--baseline_model` (e.g. FedAvg trained as long), else
  `start_weights`, the model the run started from (`--init_from`, else its
  seeded initial weights).
  """
  metric = task.report_metric
  if config.baseline_model:
    baseline_named = task.complete_weights_fn(
        load_init_weights(config.baseline_model), task.partition.shapes)
  else:
    baseline_named = start_weights
  base_u, base_v = task.partition.split(baseline_named)
  ids = evaluation_clients(task)
  datasets = [task.eval_preprocess_fn(task.test_data.create_tf_dataset_for_client(c)) for c in ids]
  committed = store.committed_round
  with tqdm.tqdm(total=2 * len(ids), desc='evaluating clients', unit='client',
                 disable=not config.progress) as bar:
    pers = evaluation.evaluate_clients(
        evaluate, shared, store.read(ids, before_round=committed + 1), datasets, ids,
        metric, progress=bar.update)
    base = evaluation.evaluate_clients(
        evaluate, base_u, [base_v] * len(ids), datasets, ids, metric, progress=bar.update)
  per_client, summary = evaluation.personalization_report(pers, base, metric)
  per_client['participations'] = store.participations(list(per_client.index), committed + 1)
  per_client['participated'] = per_client.participations > 0
  summary['clients_participated'] = int(per_client.participated.sum())
  report_dir = os.path.join(config.run_dir, 'report')
  os.makedirs(report_dir, exist_ok=True)
  per_client.to_csv(os.path.join(report_dir, 'per_client.csv'))
  # Personalization needs training: show the effect by how often v_i was trained.
  evaluation.breakdown_by(per_client, 'participations', [0, 1, 2, 3]).to_csv(
      os.path.join(report_dir, 'by_participations.csv'))
  with open(os.path.join(report_dir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  return summary

