"""Library behind `runners/train.py`: one experiment from a `config_lib.TrainConfig`.

The settings, registries and `flags.json` live in `config_lib`.

`train(config)` builds the task and the process (TFF's FedAvg or FedRecon, our
FedAlt / FedSim, stateful or stateless, or the Ditto / pFedMe baselines), runs
or resumes training in `<root_output_dir>/<experiment_name>`, exports the final
global model to `model.npz`, and writes the per-client report (`report/`)
against a non-personalized model, following the evaluation protocol of
Pillutla et al. (Sec. 5): optional finetuning of the personal part on each
client's train split, then test accuracy per client. No flags are parsed here,
so notebooks can import and call it.
"""

import dataclasses
import json
import os
from typing import Optional

from absl import logging
import numpy as np
import pandas as pd
import tensorflow_federated as tff
import tqdm

from partial_personalization import asynchronous
from partial_personalization import byzantine
from partial_personalization import client_state
from partial_personalization import evaluation
from partial_personalization import groups as groups_lib
from partial_personalization import integrity
from partial_personalization import optimizers
from partial_personalization import partition as partition_lib
from partial_personalization import personalized_process
from partial_personalization import robust_aggregators
from partial_personalization import run_lock
from partial_personalization import runtime
from partial_personalization import training_loop
from runners import config_lib

def load_init_weights(init_from: str) -> dict:
  """`--init_from`: a run directory (its model.npz) or an .npz file."""
  path = os.path.join(init_from, 'model.npz') if os.path.isdir(init_from) else init_from
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'--init_from={init_from}: {path} not found. Point it at a finished '
        'run directory (e.g. a FedAvg pretraining run) or its model.npz.')
  return partition_lib.load_named_weights(path)


def load_checkpoint_weights(path: str) -> dict:
  """`--init_checkpoint`: named weights of a pretrained model of the task's family.

  Accepts our `.npz` exports and Keras `save_weights` files (`.h5`, read by
  variable name without building a model), e.g. ImageNet weights converted
  for the ResNet-18-GN.

  Raises:
    FileNotFoundError: no such file. ValueError: an unknown format.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--init_checkpoint={path}: no such file')
  if path.endswith('.npz'):
    return partition_lib.load_named_weights(path)
  if path.endswith(('.h5', '.hdf5')):
    return partition_lib.load_keras_h5_weights(path)
  raise ValueError(f'--init_checkpoint={path}: expected a .npz of named weights or a Keras .h5')


def initial_named_weights(task, config) -> dict:
  """Seeded fresh weights, overridden where names match by `--init_checkpoint`
  (a pretrained backbone: weights of another shape, e.g. a head for other
  classes, are skipped) and then by `--init_from` (a run: shapes must match).
  """
  named = task.initial_weights(config.seed)
  if config.init_checkpoint:
    loaded = load_checkpoint_weights(config.init_checkpoint)
    used = {k: v for k, v in loaded.items() if k in named and named[k].shape == v.shape}
    if not used:
      raise ValueError(f'--init_checkpoint={config.init_checkpoint} shares no variable (name '
                       'and shape) with the model; is it for this --task and --model?')
    logging.info('--init_checkpoint: %d of %d variables loaded; fresh: %s', len(used),
                 len(named), sorted(set(named) - set(used)))
    named.update(used)
  if config.init_from:
    loaded = task.complete_weights_fn(load_init_weights(config.init_from), task.partition.shapes)
    for name, value in loaded.items():
      if name in named and named[name].shape != value.shape:
        raise ValueError(
            f'--init_from: {name} has shape {value.shape}, the model needs '
            f'{named[name].shape}; use the same model settings as that run.')
    fresh = sorted(set(named) - set(loaded))
    shared = [k for k in loaded if k in named]
    if not shared:
      raise ValueError(
          f'--init_from={config.init_from} shares no variable with this model (its names: '
          f'{sorted(loaded)[:3]}...); it is a run of another --task or model. Point it at '
          'a run of the same task and model settings.')
    if fresh:
      logging.warning('--init_from: %d of %d variables not in %s, freshly initialized: %s',
                      len(fresh), len(named), config.init_from, fresh)
    named.update({k: loaded[k] for k in shared})
  return named


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
  attack = _attack(config)
  return training_loop.PersonalizedRunner(
      process, store, initial_shared=shared, stateless=config.stateless, attack=attack,
      byzantine_ids=frozenset(attack.byzantine_clients(population)) if attack else frozenset(),
      split_rounds=runtime.splits_rounds())



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
  own = {  # Each algorithm's own hyperparameters (its builder takes no others).
      'fedalt': dict(tau_u=config.tau_u, tau_v=config.tau_v, local_unit=config.local_unit,
                     personal_l2=config.personal_l2),
      'fedsim': dict(tau=config.tau_u, local_unit=config.local_unit,
                     personal_l2=config.personal_l2),
      'ffgg': dict(finetune_steps=config.tau_v, local_steps=config.local_steps),
      'ditto': dict(prox_strength=config.prox_strength, tau_u=config.tau_u,
                    tau_v=config.tau_v, local_unit=config.local_unit),
      'pfedme': dict(prox_strength=config.prox_strength, inner_steps=config.inner_steps,
                     tau_u=config.tau_u, local_unit=config.local_unit),
  }[config.algorithm]
  return personalized_process.BUILDERS[config.algorithm](
      task.reconstruction_model_fn, loss_fn=task.loss_fn, metrics_fn=task.metrics_fn,
      client_optimizer=client_opt, personal_optimizer=personal_optimizer(config),
      server_optimizer=server_opt, model_aggregator=aggregator,
      client_weighting=config_lib.CLIENT_WEIGHTING[config.client_weighting],
      evaluation_loss_fn=task.evaluation_loss_fn, **own)


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
    'client_group'})
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


def _attack(config) -> Optional[byzantine.ByzantineAttack]:
  if not config.byzantine_fraction:
    return None
  return byzantine.ByzantineAttack(config.byzantine_fraction, config.attack,
                                   config.attack_scale, config.seed)


def _delay_model(config) -> asynchronous.DelayModel:
  return asynchronous.DelayModel(config.async_delay, config.async_delay_mean,
                                 config.async_slow_fraction, config.async_slow_factor,
                                 config.seed)


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
  for c in tqdm.tqdm(ids, desc='label histograms', unit='client'):
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


def evaluation_clients(task, config=None) -> list[str]:
  """Clients with both train and test data (in `--client_group`, if set), the
  population of the report."""
  ids = sorted(set(task.train_data.client_ids) & set(task.test_data.client_ids))
  return in_group(task, config, ids) if config else ids


def train(config: config_lib.TrainConfig) -> dict:
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
  task = config_lib.create_task(config)
  train_ids = in_group(task, config, sorted(task.train_data.client_ids))
  if config.clients_per_round > len(train_ids):
    raise ValueError(f'--clients_per_round={config.clients_per_round} exceeds the '
                     f'{len(train_ids)} training clients')
  with run_lock.exclusive(config.run_dir):
    config_lib.check_flags(config)
    named_init = initial_named_weights(task, config)
    shared_init, initial_personal = task.partition.split(named_init)
    if config_lib.is_full_personalization(config):
      initial_personal = shared_init  # v_0 is the whole start model.
    store = client_state.ClientStateStore(
        os.path.join(config.run_dir, 'client_state.sqlite'), initial_personal)
    try:
      if task.data_files:
        store.bind('data_sha256', integrity.files_sha256(task.data_files),
                   f'data (the files {[os.path.basename(f) for f in task.data_files]} in '
                   f'{config.cache_dir})')
      # Before flags.json is rewritten with the new total.
      training_loop.check_total_rounds(store, config.total_rounds)
      config_lib.write_flags(config)
      return _train(config, task, train_ids, named_init, store)
    finally:
      store.close()


def _train(config, task, train_ids, named_init, store) -> dict:
  """`train` once the run directory is locked and its saved state checked."""
  runner = build_runner(config, task, named_init, store, population=train_ids,
                        make_dataset=task.train_dataset)
  shared_n, personal_n = parameter_counts(config, task)
  logging.info('%s/%s: %d shared and %d personal parameters',
               config.algorithm, config.personalization, shared_n, personal_n)

  if isinstance(runner, training_loop.PersonalizedRunner):
    evaluate = runner.process.evaluate  # Built with the process; no second trace.
  else:
    evaluate = memoized('evaluation', config, lambda: build_evaluation(task),
                        personalization=config.personalization)
  metric = task.report_metric
  heldout_ids = set(task.heldout_data.client_ids)
  eval_ids = [c for c in evaluation_clients(task, config) if c in heldout_ids]
  eval_ids = sorted(np.random.default_rng(config.seed).permutation(eval_ids)[:config.eval_clients])
  eval_sets = None

  def eval_fn(state, round_num):
    nonlocal eval_sets
    if eval_sets is None:
      eval_sets = eval_datasets(task, 'heldout', eval_ids)
    # FedAvg's weights are in Keras order, which is u's order for 'none'.
    u = runner.global_weights(state)
    v = store.read(eval_ids, before_round=round_num + 1)
    df = evaluation.evaluate_clients(evaluate, u, v, eval_sets, eval_ids, metric)
    df = df[df.tokens > 0]  # A small client's random heldout part can be empty.
    return {f'heldout_{metric}': float(np.average(df[metric], weights=df.tokens)),
            'heldout_loss': float(np.average(df.loss, weights=df.tokens))}

  result = training_loop.run_training(
      runner, run_dir=config.run_dir, store=store, client_ids=train_ids,
      make_dataset=task.train_dataset,
      total_rounds=config.total_rounds, clients_per_round=config.clients_per_round,
      seed=config.seed, rounds_per_checkpoint=config.rounds_per_checkpoint,
      rounds_per_eval=config.rounds_per_eval, eval_fn=eval_fn, progress=config.progress)
  final_shared = runner.global_weights(result.state)
  # Full personalization: u is the whole model ('none'), store.initial a copy.
  final_named = task.partition.merge(
      final_shared, None if config_lib.is_full_personalization(config) else store.initial)
  partition_lib.save_named_weights(os.path.join(config.run_dir, 'model.npz'), final_named)
  summary = None
  if config.report and (config.algorithm != 'fedavg' or config.finetune_epochs):
    summary = write_report(config, task, evaluate, final_named, store, named_init,
                           personal_parameters=personal_n)
  return {'run_dir': config.run_dir, 'summary': summary,
          'rounds_run': result.rounds_run, 'seconds': result.seconds,
          'shared_parameters': shared_n, 'personal_parameters': personal_n}


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


def _finetune_epochs(config) -> int:
  """Stateless runs must reconstruct v_i: `--tau_v` epochs unless set."""
  if config_lib.is_stateless(config):
    return config.finetune_epochs or config.tau_v
  return config.finetune_epochs


def _report_weights(config, task, evaluate, final_named, store, ids, bar):
  """The personalized model of each report client, finetuned if asked.

  Returns (evaluate computation, u, [v_i]). Stateless runs reconstruct v_i
  from v_0 on the client's train split (`_finetune_epochs`); FedAvg with
  `--finetune_epochs` is the local finetuning baseline of
  `--finetune_personalization` (default: the whole model).
  """
  if config.algorithm == 'fedavg':
    part = config.finetune_personalization or 'full'
    task = config_lib.create_task(config, personalization=part)
    evaluate = memoized('evaluation', config, lambda: build_evaluation(task),
                        personalization=part)
    u, v0 = task.partition.split(task.complete_weights_fn(final_named, task.partition.shapes))
    personal = [v0] * len(ids)
  else:  # Full personalization stores whole models as v_i; u is unused then.
    u = task.partition.split(final_named)[0]
    if config_lib.is_stateless(config):
      personal = [store.initial] * len(ids)
    else:
      personal = store.read(ids, before_round=store.committed_round + 1)
  epochs = _finetune_epochs(config)
  if epochs:
    bar.set_description('finetuning personal parts')
    finetune = memoized('finetuning', config, lambda: build_finetuning(config, task, epochs),
                        personalization=task.partition_name, epochs=epochs,
                        learning_rate=config.finetune_learning_rate)
    personal = finetune_clients(finetune, task, config, u,
                                personal, ids, progress=bar.update)
  return evaluate, u, personal


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


def finetune_clients(finetune, task, config, u, personal, ids, *, progress=None) -> list:
  """Each client's v_i after `finetune` on its train split (shuffle seeded by
  its position in `ids`), 64 clients per TFF call."""
  train_sets = [task.train_dataset(c, training_loop.dataset_seed(config.seed, 0, i))
                for i, c in enumerate(ids)]
  tuned = []
  for start in range(0, len(ids), 64):
    chunk = finetune(u, personal[start:start + 64], train_sets[start:start + 64])
    tuned += chunk
    if progress:
      progress(len(chunk))
  return tuned


def _baseline_results(config, task, baseline_named, start_weights, splits, bar,
                      evaluate=None) -> dict:
  """Per-client results of the non-personalized model on each split.

  Args:
    splits: split name -> (client ids, evaluation datasets).

  Cached beside `--baseline_model` (`baseline_eval_<split>_<hash>.csv`, the
  hash of its model.npz, so a baseline trained further is evaluated anew),
  since every run of a grid compares with the same model on the same clients.
  Written atomically: runs evaluating the same baseline at once write the same
  file. `evaluate`
  is the run's own evaluation computation when it takes this task's (u, v);
  otherwise one is built, at most once, for the splits not cached.
  """
  metric = task.report_metric
  cache_dir = config.baseline_model if config.baseline_model and os.path.isdir(
      config.baseline_model) else None
  model_file = cache_dir and os.path.join(cache_dir, 'model.npz')
  tag = integrity.file_sha256(model_file)[:16] if model_file and os.path.exists(model_file) else None
  results, u = {}, None
  for split, (ids, sets) in splits.items():
    path = tag and os.path.join(cache_dir, f'baseline_eval_{split}_{tag}.csv')
    if path and os.path.exists(path):
      cached = pd.read_csv(path, index_col=0)
      if set(ids) <= set(cached.index):
        results[split] = cached.loc[ids]
        bar.update(len(ids))
        continue
    if evaluate is None:
      evaluate = memoized('evaluation', config, lambda: build_evaluation(task),
                          personalization=task.partition_name)
    if u is None:  # The run's model with the baseline's weights.
      # Variables the baseline lacks (adapters: identity at their start) come
      # from this run's start weights.
      named = {**start_weights, **task.complete_weights_fn(baseline_named, task.partition.shapes)}
      u, v = task.partition.split(named)
    bar.set_description(f'evaluating the baseline ({split})')
    results[split] = evaluation.evaluate_clients(
        evaluate, u, [v] * len(ids), sets, ids, metric, progress=bar.update)
    if path:
      temp = f'{path}.tmp{os.getpid()}'
      results[split].to_csv(temp)
      os.replace(temp, path)
  return results


def write_report(config, task, evaluate, final_named, store, start_weights, *,
                 personal_parameters: Optional[int] = None) -> dict:
  """Per-client test accuracy, personalized vs the non-personalized model.

  The baseline is `--baseline_model` (e.g. FedAvg trained as long), else
  `start_weights`, the model the run started from (`--init_from`, else its
  seeded initial weights). Also evaluates both on each client's heldout split
  and reports the heldout-gated choice between them (`gated_*` keys; test data
  never enters the choice).
  """
  metric = task.report_metric
  if config.baseline_model:
    baseline_named = load_init_weights(config.baseline_model)
  else:
    baseline_named = start_weights
  ids = report_client_ids(task, config)
  heldout_ids = set(task.heldout_data.client_ids)
  test_sets = eval_datasets(task, 'test', ids)
  h_ids = [c for c in ids if c in heldout_ids]
  total = (3 if _finetune_epochs(config) else 2) * len(ids) + 2 * len(h_ids)
  with tqdm.tqdm(total=total, desc='evaluating clients', unit='client',
                 disable=not config.progress) as bar:
    evaluate, u, personal = _report_weights(config, task, evaluate, final_named, store, ids, bar)
    bar.set_description('evaluating personalized models')
    pers = evaluation.evaluate_clients(
        evaluate, u, personal, test_sets, ids, metric, progress=bar.update)
    by_id = dict(zip(ids, personal))
    h_sets = eval_datasets(task, 'heldout', h_ids)
    pers_heldout = evaluation.evaluate_clients(
        evaluate, u, [by_id[c] for c in h_ids], h_sets, h_ids, metric, progress=bar.update)
    # Partial personalization evaluates (u, v) of this task: reuse its computation.
    partial = config.algorithm in personalized_process.PARTIAL_ALGORITHMS
    base = _baseline_results(config, task, baseline_named, start_weights, {
        'test': (ids, test_sets), 'heldout': (h_ids, h_sets)}, bar,
        evaluate=evaluate if partial else None)
    base, base_heldout = base['test'], base['heldout']
  per_client, summary = evaluation.personalization_report(pers, base, metric)
  attack = _attack(config)
  if attack:  # Byzantine clients' own models do not count: score the honest ones.
    byz = attack.byzantine_clients(in_group(task, config, sorted(task.train_data.client_ids)))
    honest = [c for c in pers.index if c not in byz]
    summary['honest'] = evaluation.personalization_report(
        pers.loc[honest], base.loc[honest], metric)[1]
    per_client['byzantine'] = per_client.index.isin(byz)
  # The inputs of the choice are kept, so anyone can check it saw no test data.
  # Test loss too: a smooth measure where an early model's accuracy is still 0.
  per_client['personalized_loss'] = pers.loss.reindex(per_client.index)
  per_client['baseline_loss'] = base.loss.reindex(per_client.index)
  per_client['heldout_personalized'] = pers_heldout[metric].reindex(per_client.index)
  per_client['heldout_baseline'] = base_heldout[metric].reindex(per_client.index)
  use_personalized, gated_summary = evaluation.gate_by_heldout(per_client)
  summary.update(gated_summary)
  per_client['use_personalized'] = use_personalized
  per_client['gated'] = per_client.personalized.where(use_personalized, per_client.baseline)
  per_client['train_examples'] = _train_sizes(task, list(per_client.index))
  committed = store.committed_round
  per_client['participations'] = store.participations(list(per_client.index), committed + 1)
  per_client['participated'] = per_client.participations > 0
  summary['clients_participated'] = int(per_client.participated.sum())
  summary['personal_parameters'] = personal_parameters
  report_dir = os.path.join(config.run_dir, 'report')
  os.makedirs(report_dir, exist_ok=True)
  per_client.to_csv(os.path.join(report_dir, 'per_client.csv'))
  # Personalization needs training: show the effect by how often v_i was trained.
  evaluation.breakdown_by(per_client, 'participations', [0, 1, 2, 3]).to_csv(
      os.path.join(report_dir, 'by_participations.csv'))
  with open(os.path.join(report_dir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  return summary


def _train_sizes(task, ids) -> list[int]:
  """Train examples (sentences) per client, read from the raw ClientData."""
  return [int(task.train_data.create_tf_dataset_for_client(c).reduce(0, lambda n, _: n + 1))
          for c in ids]
