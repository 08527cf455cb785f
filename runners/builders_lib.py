"""Builds what `config_lib.TrainConfig` names: optimizers, the TFF process of
`--algorithm` (TFF's FedAvg or FedRecon, or one of `personalized_process.BUILDERS`)
wrapped for the training loop, and the evaluation and finetuning computations.

Computations are memoized per Python process (`memoized`): runs that differ
only in settings no computation traces share them.
"""

import dataclasses
import json
from typing import Optional

import tensorflow_federated as tff

from partial_personalization import asynchronous
from partial_personalization import byzantine
from partial_personalization import optimizers
from partial_personalization import personalized_process
from partial_personalization import robust_aggregators
from partial_personalization import runtime
from partial_personalization import training_loop
from runners import config_lib


def personal_optimizer(config, learning_rate=None):
  """The optimizer of v: `--client_optimizer` at the personal learning rate,
  clipped as the client's (`--clip_norm`)."""
  return optimizers.build_optimizer(
      config.client_optimizer,
      learning_rate or config.personal_learning_rate or config.client_learning_rate,
      clip_norm=config.clip_norm)


def server_optimizer(config):
  """`--server_optimizer` at `--server_learning_rate`; with
  `--server_lr_schedule=warmup_decay`, warmed up over
  `--server_warmup_fraction` of `--total_rounds`, then decayed linearly to 0."""
  scheduled = config.server_lr_schedule == 'warmup_decay'
  return optimizers.build_optimizer(
      config.server_optimizer, config.server_learning_rate,
      epsilon=optimizers.SERVER_EPSILON,
      total_steps=config.total_rounds if scheduled else None,
      warmup_fraction=config.server_warmup_fraction)


def build_runner(config, task, named_init, store, *, population=None,
                 make_dataset=None) -> training_loop.RoundRunner:
  """The process of `config.algorithm` wrapped for the training loop, starting
  from `named_init`; personal state (if any) lives in `store`.

  `population` (training client ids; default all) seeds the Byzantine set, and
  with `make_dataset` ((client id, seed) -> dataset) drives asynchronous runs.
  """
  shared, _ = task.partition.split(named_init)
  process = memoized('process', config, lambda: _build_process(config, task))
  if config.algorithm in ('fedavg', 'fedrecon'):
    return training_loop.FedAvgRunner(process, initial_weights=shared)
  population = sorted(population or task.train_data.client_ids)
  if config.asynchronous:
    if make_dataset is None:
      raise ValueError('an asynchronous runner needs make_dataset')
    return asynchronous.AsyncRunner(
        process, store, population=population, make_dataset=make_dataset,
        delays=_delay_model(config),
        concurrency=config.async_concurrency or config.clients_per_round,
        seed=config.seed, delay_adaptive=config.async_delay_adaptive,
        stateless=config.stateless, initial_shared=shared)
  attack = build_attack(config)
  return training_loop.PersonalizedRunner(
      process, store, initial_shared=shared, stateless=config.stateless, attack=attack,
      byzantine_ids=frozenset(attack.byzantine_clients(population)) if attack else frozenset(),
      split_rounds=runtime.splits_rounds())


# Each algorithm's own hyperparameters: its builder's keyword -> the
# `TrainConfig` field (flag) that sets it. A builder takes no others.
ALGORITHM_SETTINGS = {
    'fedalt': dict(tau_u='tau_u', tau_v='tau_v', local_unit='local_unit',
                   personal_l2='personal_l2'),
    'fedsim': dict(tau='tau_u', local_unit='local_unit', personal_l2='personal_l2'),
    'ffgg': dict(finetune_steps='tau_v', local_steps='local_steps'),
    'ditto': dict(prox_strength='prox_strength', tau_u='tau_u', tau_v='tau_v',
                  local_unit='local_unit'),
    'pfedme': dict(prox_strength='prox_strength', inner_steps='inner_steps', tau_u='tau_u',
                   local_unit='local_unit'),
}


def _build_process(config, task):
  """The TFF process of `config.algorithm` (TFF's FedAvg or FedRecon, or ours)."""
  client_opt = optimizers.build_optimizer(
      config.client_optimizer, config.client_learning_rate, clip_norm=config.clip_norm)
  server_opt = server_optimizer(config)
  aggregator = robust_aggregators.build_robust_aggregator(
      config.aggregator, trim_fraction=config.trim_fraction,
      bucket_size=config.bucket_size, seed=config.seed)
  if config.algorithm == 'fedavg':
    return tff.learning.algorithms.build_weighted_fed_avg(
        task.variable_model_fn, client_optimizer_fn=client_opt,
        server_optimizer_fn=server_opt, model_aggregator=aggregator,
        client_weighting=config_lib.CLIENT_WEIGHTING[config.client_weighting],
        loop_implementation=tff.learning.LoopImplementation.DATASET_ITERATOR)
  if config.algorithm == 'fedrecon':
    # Configured as stateless FedAlt: reconstruction on the whole client
    # dataset for tau_v epochs, then tau_u epochs on u (see docs/design.md).
    return tff.learning.algorithms.build_fed_recon(
        task.reconstruction_model_fn, loss_fn=task.loss_fn, metrics_fn=task.metrics_fn,
        client_optimizer_fn=client_opt, server_optimizer_fn=server_opt,
        client_weighting=config_lib.CLIENT_WEIGHTING[config.client_weighting],
        reconstruction_optimizer_fn=personal_optimizer(config),
        dataset_split_fn=tff.learning.models.ReconstructionModel.build_dataset_split_fn(
            recon_epochs=config.tau_v, post_recon_epochs=config.tau_u, split_dataset=False))
  own = {keyword: getattr(config, field)
         for keyword, field in ALGORITHM_SETTINGS[config.algorithm].items()}
  return personalized_process.BUILDERS[config.algorithm](
      task.reconstruction_model_fn, loss_fn=task.loss_fn, metrics_fn=task.metrics_fn,
      client_optimizer=client_opt, personal_optimizer=personal_optimizer(config),
      server_optimizer=server_opt, model_aggregator=aggregator,
      client_weighting=config_lib.CLIENT_WEIGHTING[config.client_weighting],
      evaluation_loss_fn=task.evaluation_loss_fn, **own)


def build_evaluation(task) -> tff.Computation:
  """The task's per-client evaluation of (u, v_i) (its `evaluation_loss_fn`,
  no gradient taken); see `personalized_process.build_personalized_evaluation`."""
  return personalized_process.build_personalized_evaluation(
      task.reconstruction_model_fn, loss_fn=task.evaluation_loss_fn, metrics_fn=task.metrics_fn)


def build_finetuning(config, task, epochs: int) -> tff.Computation:
  """`personalized_process.build_personal_finetuning` with the run's settings
  (`--finetune_learning_rate`, `--local_unit`, `--personal_l2`)."""
  return personalized_process.build_personal_finetuning(
      task.reconstruction_model_fn, loss_fn=task.loss_fn,
      optimizer=personal_optimizer(config, config.finetune_learning_rate),
      tau=epochs, local_unit=config.local_unit, personal_l2=config.personal_l2)


# Settings that never enter a TFF computation. Runs that differ only in them
# share their computations (`memoized`): a main job traces each process once
# for all its seeds, instead of about 10 s per run.
_NOT_TRACED = frozenset({
    'experiment_name', 'root_output_dir', 'init_from', 'init_checkpoint', 'baseline_model',
    'report', 'progress', 'rounds_per_eval', 'rounds_per_checkpoint', 'eval_clients',
    'report_clients', 'finetune_epochs', 'finetune_learning_rate',
    'finetune_personalization', 'clients_per_round', 'byzantine_fraction', 'attack',
    'attack_scale', 'async_concurrency', 'async_delay', 'async_delay_mean',
    'async_slow_fraction', 'async_slow_factor', 'async_delay_adaptive', 'groups',
    'client_group', 'client_sampling'})


# What the evaluation and the finetuning computations read of a config (with
# the task's options): they do not depend on the algorithm that trained.
_TASK_FIELDS = ('task', 'cache_dir', 'model_size', 'adapter_size', 'dropout', 'vocab_size',
                'model', 'width_multiplier', 'heldout_fraction', 'gldv2_variant', 'image_size',
                'crop_size', 'client_batch_size', 'max_examples_per_client')


_FINETUNE_FIELDS = _TASK_FIELDS + ('client_optimizer', 'client_learning_rate',
                                   'personal_learning_rate', 'clip_norm', 'local_unit',
                                   'personal_l2')


_COMPUTATIONS = {}


def memoized(what: str, config, build, **details):
  """`build()`, once per Python process for equal (`what`, the settings of
  `config` it traces, `details`).

  A 'process' traces every setting but `_NOT_TRACED` (the seed only with
  robust aggregators, which bucket with it; the total rounds only with a
  server schedule); an 'evaluation' only `_TASK_FIELDS`; a 'finetuning'
  `_FINETUNE_FIELDS`.
  """
  fields = dataclasses.asdict(config)
  if what == 'evaluation':
    settings = {k: fields[k] for k in _TASK_FIELDS}
  elif what == 'finetuning':
    settings = {k: fields[k] for k in _FINETUNE_FIELDS}
  else:
    ignored = set(_NOT_TRACED)
    if config.aggregator == 'mean' and config.bucket_size == 1:
      ignored.add('seed')
    if config.server_lr_schedule == 'constant':
      ignored.add('total_rounds')
    settings = {k: v for k, v in fields.items() if k not in ignored}
  key = json.dumps([what, settings, details], sort_keys=True, default=str)
  if key not in _COMPUTATIONS:
    _COMPUTATIONS[key] = build()
  return _COMPUTATIONS[key]


def build_attack(config) -> Optional[byzantine.ByzantineAttack]:
  """The Byzantine attack of `--byzantine_fraction` (None without one)."""
  if not config.byzantine_fraction:
    return None
  return byzantine.ByzantineAttack(config.byzantine_fraction, config.attack,
                                   config.attack_scale, config.seed)


def _delay_model(config) -> asynchronous.DelayModel:
  return asynchronous.DelayModel(config.async_delay, config.async_delay_mean,
                                 config.async_slow_fraction, config.async_slow_factor,
                                 config.seed)


def parameter_counts(config, task=None) -> tuple[int, int]:
  """(shared, personal) parameters per client of a run.

  Full personalization keeps a whole personal model; the local finetuning
  baseline counts the part it finetunes.
  """
  task = task or config_lib.create_task(config)
  shared_n, personal_n = task.partition.num_parameters()
  if config_lib.is_full_personalization(config):
    personal_n = shared_n
  elif config.algorithm == 'fedavg' and config.finetune_epochs:
    personal_n = config_lib.create_task(
        config, config.finetune_personalization or 'full').partition.num_parameters()[1]
  return shared_n, personal_n
