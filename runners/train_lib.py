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

import os

from absl import logging
import numpy as np

from partial_personalization import evaluation
from partial_personalization.models import partition as partition_lib
from partial_personalization.programs import round_runners
from partial_personalization.programs import training_loop
from partial_personalization.state import client_state
from partial_personalization.state import integrity
from partial_personalization.state import run_lock
from runners import algorithm_registry
from runners import builders_lib
from runners import config_lib
from runners import population_lib
from runners import report_lib
from runners import weights_lib


def train(config: config_lib.TrainConfig, *, on_eval=None) -> dict:
  """Runs or resumes one experiment.

  Args:
    config: the run's settings.
    on_eval: optional `on_eval(round_num, named_weights, metrics)`, called
      after each periodic heldout evaluation with the global model of that
      round (named weights, the personal part at v_0) and its heldout metrics;
      e.g. the pretraining stage keeps a snapshot of the model there.

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
  train_ids = population_lib.in_group(task, config, sorted(task.train_data.client_ids))
  if config.clients_per_round > len(train_ids):
    raise ValueError(f'--clients_per_round={config.clients_per_round} exceeds the '
                     f'{len(train_ids)} training clients')
  with run_lock.exclusive(config.run_dir):
    config_lib.check_flags(config)
    named_init = weights_lib.initial_named_weights(task, config)
    shared_init, initial_personal = task.partition.split(named_init)
    if config.spec.whole_model:
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
      return _train(config, task, train_ids, named_init, store, on_eval)
    finally:
      store.close()


def _train(config, task, train_ids, named_init, store, on_eval) -> dict:
  """`train` once the run directory is locked and its saved state checked."""
  runner = builders_lib.build_runner(config, task, named_init, store, population=train_ids,
                                     make_dataset=task.train_dataset)
  shared_n, personal_n = builders_lib.parameter_counts(config, task)
  logging.info('%s/%s: %d shared and %d personal parameters',
               config.algorithm, config.personalization, shared_n, personal_n)

  if isinstance(runner, round_runners.PersonalizedRunner):
    evaluate = runner.process.evaluate  # Built with the process; no second trace.
  else:
    evaluate = builders_lib.memoized('evaluation', config,
                                     lambda: builders_lib.build_evaluation(task),
                                     personalization=config.personalization)
  metric = task.report_metric
  heldout_ids = set(task.heldout_data.client_ids)
  eval_ids = [c for c in population_lib.evaluation_clients(task, config) if c in heldout_ids]
  eval_ids = sorted(np.random.default_rng(config.seed).permutation(eval_ids)[:config.eval_clients])
  eval_sets = None

  def eval_fn(state, round_num):
    nonlocal eval_sets
    if eval_sets is None:
      eval_sets = population_lib.eval_datasets(task, 'heldout', eval_ids)
    # FedAvg's weights are in Keras order, which is u's order for 'none'.
    u = runner.global_weights(state)
    v = store.read(eval_ids, before_round=round_num + 1)
    df = evaluation.evaluate_clients(evaluate, u, v, eval_sets, eval_ids, metric)
    df = df[df.tokens > 0]  # A small client's random heldout part can be empty.
    metrics = {f'heldout_{metric}': float(np.average(df[metric], weights=df.tokens)),
               'heldout_loss': float(np.average(df.loss, weights=df.tokens))}
    if on_eval is not None:
      on_eval(round_num, task.partition.merge(u, store.initial), metrics)
    return metrics

  result = training_loop.run_training(
      runner, run_dir=config.run_dir, store=store, client_ids=train_ids,
      make_dataset=task.train_dataset,
      total_rounds=config.total_rounds, clients_per_round=config.clients_per_round,
      client_sampling=config.client_sampling,
      seed=config.seed, rounds_per_checkpoint=config.rounds_per_checkpoint,
      rounds_per_eval=config.rounds_per_eval, eval_fn=eval_fn, progress=config.progress)
  final_shared = runner.global_weights(result.state)
  # Full personalization: u is the whole model ('none'), store.initial a copy.
  final_named = task.partition.merge(
      final_shared, None if config.spec.whole_model else store.initial)
  partition_lib.save_named_weights(os.path.join(config.run_dir, 'model.npz'), final_named)
  summary = None
  personalized = config.spec.personal != algorithm_registry.NOT_PERSONALIZED
  if config.report and (personalized or config.finetune_epochs):
    key = report_lib.report_key(config, store)
    summary = report_lib.cached_summary(config, key)
    if summary is None:
      summary = report_lib.write_report(config, task, evaluate, final_named, store, named_init,
                                        personal_parameters=personal_n)
      report_lib.mark_report(config, key)
  return {'run_dir': config.run_dir, 'summary': summary,
          'rounds_run': result.rounds_run, 'seconds': result.seconds,
          'shared_parameters': shared_n, 'personal_parameters': personal_n}
