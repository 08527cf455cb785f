"""The per-client report of a finished run (`report/`), through the library's
evaluation protocol (`evaluation.protocol`): the run's settings decide the
models compared, the clients and the computations; the protocol does the rest.
"""

import hashlib
import json
import os
from typing import Optional


from partial_personalization import evaluation
from partial_personalization.evaluation import protocol
from partial_personalization.programs import progress as progress_lib
from partial_personalization.programs import training_loop
from partial_personalization.state import integrity
from runners import algorithm_registry
from runners import builders_lib
from runners import config_lib
from runners import population_lib
from runners import weights_lib


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
  if config.spec.personal == algorithm_registry.NOT_PERSONALIZED:
    part = config.finetune_personalization or 'full'
    task = config_lib.create_task(config, personalization=part)
    evaluate = builders_lib.memoized('evaluation', config,
                                     lambda: builders_lib.build_evaluation(task),
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
    finetune = builders_lib.memoized(
        'finetuning', config, lambda: builders_lib.build_finetuning(config, task, epochs),
        personalization=task.partition_name, epochs=epochs,
        learning_rate=config.finetune_learning_rate)
    personal = finetune_clients(finetune, task, config, u, personal, ids, progress=bar.update)
  return evaluate, u, personal


def finetune_clients(finetune, task, config, u, personal, ids, *, progress=None) -> list:
  """`protocol.finetune_clients` on each client's train split
  (shuffle seeded by its position in `ids`)."""
  train_sets = [task.train_dataset(c, training_loop.dataset_seed(config.seed, 0, i))
                for i, c in enumerate(ids)]
  return protocol.finetune_clients(finetune, u, personal, train_sets,
                                              progress=progress)


def baseline_results(config, task, baseline_named, start_weights, splits, bar,
                     evaluate=None) -> dict:
  """Per-client results of the non-personalized model on each split.

  Args:
    splits: split name -> (client ids, evaluation datasets).

  Cached beside `--baseline_model` when it is a run directory
  (`protocol.BaselineCache`). `evaluate` is the run's own
  evaluation computation when it takes this task's (u, v); otherwise one is
  built, at most once, for the splits not cached.
  """
  cache_dir = config.baseline_model if config.baseline_model and os.path.isdir(
      config.baseline_model) else None
  cache = protocol.BaselineCache(cache_dir,
                                            cache_dir and weights_lib.model_file(cache_dir))
  results, u = {}, None
  for split, (ids, sets) in splits.items():
    cached = cache.read(split, ids)
    if cached is not None:
      results[split] = cached
      bar.update(len(ids))
      continue
    if evaluate is None:
      evaluate = builders_lib.memoized('evaluation', config,
                                       lambda: builders_lib.build_evaluation(task),
                                       personalization=task.partition_name)
    if u is None:  # The run's model with the baseline's weights.
      # Variables the baseline lacks (adapters: identity at their start) come
      # from this run's start weights.
      named = {**start_weights, **task.complete_weights_fn(baseline_named, task.partition.shapes)}
      u, v = task.partition.split(named)
    bar.set_description(f'evaluating the baseline ({split})')
    results[split] = evaluation.evaluate_clients(
        evaluate, u, [v] * len(ids), sets, ids, task.report_metric, progress=bar.update)
    cache.write(split, results[split])
  return results


def write_report(config, task, evaluate, final_named, store, start_weights, *,
                 personal_parameters: Optional[int] = None) -> dict:
  """Per-client test accuracy, personalized vs the non-personalized model,
  in `<run_dir>/report/` (`protocol.write_report`).

  The baseline is `--baseline_model` (e.g. FedAvg trained as long), else
  `start_weights`, the model the run started from (`--init_from`, else its
  seeded initial weights). Both are also evaluated on each client's heldout
  split for the heldout-gated choice (`gated_*` keys; test data never enters
  the choice). Returns the summary.
  """
  metric = task.report_metric
  if config.baseline_model:
    baseline_named = weights_lib.load_init_weights(config.baseline_model)
  else:
    baseline_named = start_weights
  ids = population_lib.report_client_ids(task, config)
  heldout_ids = set(task.heldout_data.client_ids)
  test_sets = population_lib.eval_datasets(task, 'test', ids)
  h_ids = [c for c in ids if c in heldout_ids]
  total = (3 if _finetune_epochs(config) else 2) * len(ids) + 2 * len(h_ids)
  with progress_lib.bar(total=total, desc='evaluating clients', unit='client',
                 disable=not config.progress) as bar:
    evaluate, u, personal = _report_weights(config, task, evaluate, final_named, store, ids, bar)
    bar.set_description('evaluating personalized models')
    pers = evaluation.evaluate_clients(
        evaluate, u, personal, test_sets, ids, metric, progress=bar.update)
    by_id = dict(zip(ids, personal))
    h_sets = population_lib.eval_datasets(task, 'heldout', h_ids)
    pers_heldout = evaluation.evaluate_clients(
        evaluate, u, [by_id[c] for c in h_ids], h_sets, h_ids, metric, progress=bar.update)
    # Partial personalization evaluates (u, v) of this task: reuse its computation.
    partial = config.algorithm in algorithm_registry.partial_algorithms()
    base = baseline_results(config, task, baseline_named, start_weights, {
        'test': (ids, test_sets), 'heldout': (h_ids, h_sets)}, bar,
        evaluate=evaluate if partial else None)
  attack = builders_lib.build_attack(config)
  byzantine = None
  if attack:  # Byzantine clients' own models do not count: score the honest ones.
    byzantine = attack.byzantine_clients(
        population_lib.in_group(task, config, sorted(task.train_data.client_ids)))
  per_client, summary = protocol.compare(
      pers, base['test'], pers_heldout, base['heldout'], metric, byzantine=byzantine)
  per_client['train_examples'] = _train_sizes(task, list(per_client.index))
  committed = store.committed_round
  per_client['participations'] = store.participations(list(per_client.index), committed + 1)
  per_client['participated'] = per_client.participations > 0
  summary['clients_participated'] = int(per_client.participated.sum())
  summary['personal_parameters'] = personal_parameters
  protocol.write_report(os.path.join(config.run_dir, 'report'), per_client, summary)
  return summary


def report_key(config, store) -> str:
  """What a finished run's report depends on: its settings (flags.json), its
  final model, its committed round (the personal state of a committed round
  never changes), and the models it compares with (sha256 of the files)."""
  parts = [config.run_dir, str(store.committed_round)]
  for path in (os.path.join(config.run_dir, 'flags.json'),
               weights_lib.model_file(config.run_dir),
               config.baseline_model and weights_lib.model_file(config.baseline_model),
               config.init_from and weights_lib.model_file(config.init_from),
               config.init_checkpoint):
    parts.append(integrity.file_sha256(path) if path and os.path.exists(path) else '-')
  return hashlib.sha256('\n'.join(parts).encode()).hexdigest()


def cached_summary(config, key: str) -> Optional[dict]:
  """The summary of the report already in `<run_dir>/report` when it was
  written for `key` (`report_key`): re-running a finished job reads it
  instead of evaluating every client again."""
  report_dir = os.path.join(config.run_dir, 'report')
  try:
    with open(os.path.join(report_dir, 'key.txt')) as f:
      if f.read().strip() != key:
        return None
    with open(os.path.join(report_dir, 'summary.json')) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def mark_report(config, key: str) -> None:
  with open(os.path.join(config.run_dir, 'report', 'key.txt'), 'w') as f:
    f.write(key + '\n')


def _train_sizes(task, ids) -> list[int]:
  """Train examples (sentences) per client, read from the raw ClientData."""
  return [int(task.train_data.create_tf_dataset_for_client(c).reduce(0, lambda n, _: n + 1))
          for c in ids]
