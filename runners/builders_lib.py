"""Builds what `config_lib.TrainConfig` names: optimizers, the TFF process of
`--algorithm` (its `algorithm_registry` entry) wrapped for the training loop,
and the evaluation and finetuning computations.

Computations are memoized per Python process (`memoized`): runs that differ
only in settings no computation traces share them.
"""

import dataclasses
import json
from typing import Optional

import tensorflow_federated as tff

from partial_personalization import evaluation
from partial_personalization.execution import runtime
from partial_personalization.programs import asynchronous
from partial_personalization.programs import byzantine
from partial_personalization.programs import round_runners
from partial_personalization.templates import optimizers
from partial_personalization.templates import robust_aggregators
from runners import algorithm_registry
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
                 make_dataset=None) -> round_runners.RoundRunner:
  """The process of `config.algorithm` wrapped for the training loop, starting
  from `named_init`; personal state (if any) lives in `store`.

  `population` (training client ids; default all) seeds the Byzantine set, and
  with `make_dataset` ((client id, seed) -> dataset) drives asynchronous runs.
  """
  shared, _ = task.partition.split(named_init)
  process = memoized('process', config, lambda: _build_process(config, task))
  if config.spec.tff_process:
    return round_runners.FedAvgRunner(process, initial_weights=shared)
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
  common = dict(initial_shared=shared, stateless=config.stateless,
                split_rounds=runtime.splits_rounds())
  attack = build_attack(config)
  if attack:
    return byzantine.ByzantineRunner(
        process, store, attack=attack,
        byzantine_ids=frozenset(attack.byzantine_clients(population)), **common)
  return round_runners.PersonalizedRunner(process, store, **common)


def _build_process(config, task):
  """The TFF process of `config.algorithm` (`AlgorithmSpec.build`) with the
  run's optimizers, aggregator and weighting, and the algorithm's settings."""
  parts = dict(
      client_optimizer=optimizers.build_optimizer(
          config.client_optimizer, config.client_learning_rate, clip_norm=config.clip_norm),
      personal_optimizer=personal_optimizer(config),
      server_optimizer=server_optimizer(config),
      model_aggregator=robust_aggregators.build_robust_aggregator(
          config.aggregator, trim_fraction=config.trim_fraction,
          bucket_size=config.bucket_size, seed=config.seed),
      client_weighting=config_lib.CLIENT_WEIGHTING[config.client_weighting])
  settings = {keyword: getattr(config, field) for keyword, field in config.spec.settings.items()}
  return config.spec.build(task, parts, **settings)


def build_evaluation(task) -> tff.Computation:
  """The task's per-client evaluation of (u, v_i) (its `evaluation_loss_fn`,
  no gradient taken); see `evaluation.build_personalized_evaluation`."""
  return evaluation.build_personalized_evaluation(
      task.reconstruction_model_fn, loss_fn=task.evaluation_loss_fn, metrics_fn=task.metrics_fn)


def build_finetuning(config, task, epochs: int) -> tff.Computation:
  """`evaluation.build_personal_finetuning` with the run's settings
  (`--finetune_learning_rate`, `--local_unit`, `--personal_l2`)."""
  return evaluation.build_personal_finetuning(
      task.reconstruction_model_fn, loss_fn=task.loss_fn,
      optimizer=personal_optimizer(config, config.finetune_learning_rate),
      tau_v=epochs, local_unit=config.local_unit, personal_l2=config.personal_l2)


# Settings by the computations they enter (`config_lib.TRACED`). Runs that
# differ only in settings a computation does not trace share it (`memoized`):
# a main job traces each process once for all its seeds, instead of about
# 10 s per run.
_NOT_TRACED = frozenset(config_lib.fields_where(traced='never'))
# What the evaluation reads of a config: not the algorithm that trained.
_TASK_FIELDS = config_lib.fields_where(traced='model')
_FINETUNE_FIELDS = _TASK_FIELDS + config_lib.fields_where(traced='finetuning')


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
  if config.spec.whole_model:
    personal_n = shared_n
  elif config.spec.personal == algorithm_registry.NOT_PERSONALIZED and config.finetune_epochs:
    personal_n = config_lib.create_task(
        config, config.finetune_personalization or 'full').partition.num_parameters()[1]
  return shared_n, personal_n
