"""The paper's grid on real data: one command, table and figures.

  bazel run //runners:experiment_grid -- --output_dir=output/grid
  bazel run //runners:experiment_grid -- --task=emnist --output_dir=output/emnist_grid \
      --cells='fed*_head_stateful,fed*_adapter_stateful'
  bazel run //runners:experiment_grid -- --study=ffgg --output_dir=output/ffgg_study

1. Prepares the data once: converts the Stack Exchange dumps (`--dump_dirs`,
   as the main job does) or LEAF FEMNIST (`--femnist_dir`); GLDv2 is read
   from `--cache_dir`.
2. FedAvg pretraining, then FedAvg for `--rounds` more: the non-personalized row.
3. Each cell of `grid_lib.paper_cells` (or `ffgg_cells` with `--study=ffgg`;
   `--cells` globs select some), from the
   pretrained model for `--rounds` rounds, and its per-client report against
   that FedAvg model (mean, std, percentiles, helped/hurt, heldout gating).
4. Writes `table.csv`, `table.md`, `delta_vs_train_size.png`,
   `delta_histograms.png`, `accuracy_vs_parameters.png` to `--output_dir`.

Resumable: run it again and finished cells are skipped. `--num_shards` and
`--shard_index` split the cells across processes (the baseline is trained once
under a file lock); run a last time without `--cells` to write the full table.
"""

from runners import cli  # First: TensorFlow without its start-up noise.
import fcntl
import os

from absl import flags

from runners import flags_lib
from runners import grid_lib
from runners import paths
from tasks import registry
from tasks.emnist import convert_lib as emnist_convert_lib

flags_lib.define_executor_flags()
# `--help` lists the flags defined in flags_lib, not only this module's.
flags.adopt_module_key_flags(flags_lib)
_TASK = flags.DEFINE_enum('task', 'stackoverflow', list(grid_lib.PARTITIONS), 'Task.')
_DUMP_DIRS = flags.DEFINE_list('dump_dirs', ['../shared/data/stackexchange'],
                               'stackoverflow: Stack Exchange site folders, or folders of them.')
_FEMNIST_DIR = flags.DEFINE_string('femnist_dir', '../shared/data/femnist',
                                   'emnist: LEAF FEMNIST folder (train/, test/).')
_CACHE_DIR = flags.DEFINE_string('cache_dir', None, 'gldv2: folder with gld23k/ or gld160k/ '
                                 'in TFF\'s cache layout.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'output/grid', 'Runs, table and figures.')
_MIN_EXAMPLES = flags.DEFINE_integer('min_examples', 200,
                                     'stackoverflow: sentences a client needs to be kept.')
_PRETRAIN_ROUNDS = flags.DEFINE_integer('pretrain_rounds', 25, 'FedAvg pretraining rounds.')
_ROUNDS = flags.DEFINE_integer('rounds', 10, 'Rounds of every cell after pretraining.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 10, 'Clients per round.')
_MODEL_SIZE = flags.DEFINE_string('model_size', 'tiny', 'stackoverflow: tiny or mini.')
_MODEL = flags.DEFINE_string('model', None, 'emnist: cnn or resnet18; gldv2: resnet18 or '
                             'mobilenet_v2 (default: the task\'s).')
_CLIENT_LR = flags.DEFINE_float('client_learning_rate', None,
                                'Local SGD learning rate of u (default: the task\'s).')
_PERSONAL_LR = flags.DEFINE_float('personal_learning_rate', None,
                                  'Local SGD learning rate of v (default: the task\'s).')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples_per_client', None,
                                     'Examples a client uses per round (default: the task\'s).')
_FINETUNE_EPOCHS = flags.DEFINE_integer('finetune_epochs', 1,
                                        'Epochs of the local finetuning baseline.')
_DITTO_LAMBDA = flags.DEFINE_float('ditto_lambda', 0.1, 'Ditto\'s pull of v_i toward u.')
_PFEDME_LAMBDA = flags.DEFINE_float(
    'pfedme_lambda', 1.0, 'pFedMe\'s lambda; the local model moves by '
    'client_learning_rate * lambda of its gap to theta per batch.')
_REPORT_CLIENTS = flags.DEFINE_integer('report_clients', 0,
                                       'Clients in each report (0: all with train and test).')
_PARTITIONS = flags.DEFINE_list('partitions', None, 'Grid partitions (default: all of the '
                                'task\'s: ' + '; '.join(f'{t}: {",".join(p)}' for t, p in
                                                       grid_lib.PARTITIONS.items()) + ').')
_STUDY = flags.DEFINE_enum('study', 'paper', list(grid_lib.STUDIES),
                           'paper: the partial-personalization grid of Pillutla et al.; ffgg: '
                           'FFGG vs FedAlt, and mean vs median with bucketing under attack.')
_FFGG_SERVER_LR = flags.DEFINE_float(
    'ffgg_server_learning_rate', 0.3, 'ffgg study: FFGG\'s server step size gamma (0.3 '
    'trained best of 0.1, 0.3, 1 over 4 rounds on the Stack Exchange data; 1 diverged).')
_BYZANTINE_FRACTION = flags.DEFINE_float('byzantine_fraction', 0.2,
                                         'ffgg study: fraction of Byzantine clients.')
_ATTACK_SCALES = flags.DEFINE_list('attack_scales', ['1', '5'],
                                   'ffgg study: Byzantine clients send -scale * update; one '
                                   'set of attack cells per scale.')
_BUCKET_SIZE = flags.DEFINE_integer('bucket_size', 2, 'ffgg study: bucket size of the median.')
_FFGG_STEPS = flags.DEFINE_integer(
    'ffgg_tau_v', 20, 'ffgg study: K, full-batch fine-tuning steps of FFGG in its own '
    'regime (uniform weights), against FedAlt with K epochs on v (same gradient evaluations).')
_CELLS = flags.DEFINE_list('cells', [], 'Glob patterns of cell names to run (default: all).')
_NUM_SHARDS = flags.DEFINE_integer('num_shards', 1, 'Split the cells across this many processes.')
_SHARD_INDEX = flags.DEFINE_integer('shard_index', 0, 'Which split this process runs.')
_SEEDS = flags.DEFINE_list(
    'seeds', ['0'], 'Seeds. With several, the grid of each seed (its own pretraining and '
    'baseline) goes to <output_dir>/seed<N>, and table_over_seeds.md gives each row as mean '
    'and 95% interval over seeds, FedAlt - FedSim paired by seed, and the verdict on each of '
    'the three findings of the paper.')
_PROGRESS = flags.DEFINE_bool('progress', True, 'Show progress bars.')


def _prepare_data(out: str) -> dict:
  """Converts the task's real data once; returns its TrainConfig fields.

  Shards started together convert under a file lock: one writes, the others
  wait and then find the data.
  """
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, '.data.lock'), 'w') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    return _convert_task_data(out)


def _convert_task_data(out: str) -> dict:
  task, data_dir = _TASK.value, os.path.join(out, 'data')
  if task == 'stackoverflow':
    flags_lib.ensure_converted(_DUMP_DIRS.value, data_dir, _MIN_EXAMPLES.value)
    return dict(cache_dir=data_dir, model_size=_MODEL_SIZE.value)
  if task == 'emnist':
    emnist_convert_lib.convert_if_missing(paths.resolve_path(_FEMNIST_DIR.value), data_dir)
    return dict(cache_dir=data_dir, model=_MODEL.value)
  if not _CACHE_DIR.value:
    raise ValueError('--task=gldv2 needs --cache_dir (the folder holding gld23k/ or gld160k/)')
  return dict(cache_dir=paths.resolve_path(_CACHE_DIR.value), model=_MODEL.value)


def _run():
  if not 0 <= _SHARD_INDEX.value < _NUM_SHARDS.value:
    raise ValueError('need 0 <= --shard_index < --num_shards')
  out = paths.resolve_path(_OUTPUT_DIR.value)
  seeds = [int(s) for s in _SEEDS.value]
  if len(set(seeds)) != len(seeds):
    raise ValueError(f'--seeds must be distinct, got {seeds}')
  data = _prepare_data(out)
  tables = {}
  for seed in seeds:
    seed_out = out if len(seeds) == 1 else grid_lib.seed_dir(out, seed)
    if len(seeds) > 1:
      print(f'=== seed {seed}: {seed_out}', flush=True)
    tables[seed] = _run_grid(seed_out, seed, data)
  if len(seeds) > 1:
    _, _, markdown = grid_lib.over_seeds(tables)
    with open(os.path.join(out, 'table_over_seeds.md'), 'w') as f:
      f.write(f'Over seeds {seeds}: mean [95% interval]\n\n{markdown}\n')
    print(f'\nOver seeds {seeds}: mean [95% interval] (Student t)\n')
    print(markdown)
    print(f'\n{out}/table_over_seeds.md')


def _run_grid(out: str, seed: int, data: dict):
  """One seed's grid under `out`; returns its table."""
  client_lr, personal_lr, max_examples = registry.TASKS[_TASK.value].grid_defaults
  common = dict(
      task=_TASK.value, root_output_dir=out, **data,
      client_learning_rate=_CLIENT_LR.value or client_lr,
      personal_learning_rate=_PERSONAL_LR.value or personal_lr,
      clients_per_round=_CLIENTS_PER_ROUND.value,
      max_examples_per_client=_MAX_EXAMPLES.value or max_examples,
      report_clients=_REPORT_CLIENTS.value, seed=seed,
      rounds_per_checkpoint=5, progress=_PROGRESS.value)
  study = dict(task=_TASK.value, finetune_epochs=_FINETUNE_EPOCHS.value,
               ditto_lambda=_DITTO_LAMBDA.value, pfedme_lambda=_PFEDME_LAMBDA.value)
  if _STUDY.value == 'paper':
    all_cells = grid_lib.paper_cells(partitions=_PARTITIONS.value, **study)
  else:
    all_cells = grid_lib.ffgg_cells(
        ffgg_server_learning_rate=_FFGG_SERVER_LR.value,
        byzantine_fraction=_BYZANTINE_FRACTION.value,
        attack_scales=[float(x) for x in _ATTACK_SCALES.value],
        bucket_size=_BUCKET_SIZE.value, ffgg_tau_v=_FFGG_STEPS.value, **study)
  cells = grid_lib.select(all_cells, _CELLS.value)[_SHARD_INDEX.value::_NUM_SHARDS.value]
  with flags_lib.tff_runtime():
    grid_lib.train_baseline(common, pretrain_rounds=_PRETRAIN_ROUNDS.value,
                            rounds=_ROUNDS.value)
  for i, cell in enumerate(cells, 1):
    print(f'[{i}/{len(cells)}] {cell.name}', flush=True)
    grid_lib.run_cell_in_subprocess(cell, grid_lib.cell_config(cell, common, _ROUNDS.value),
                                    flags_lib.executor_config_from_flags())
  table, markdown = grid_lib.write_outputs(all_cells, common, _ROUNDS.value)
  missing = [c.name for c in all_cells if c.name not in set(table.cell)]
  print('\nPer-client test accuracy weighted by test tokens (examples for images); hurt = clients below the '
        'non-personalized model; gated = per-client choice from heldout data.\n')
  print(markdown)
  if missing:
    print(f'\nnot finished yet: {", ".join(missing)}')
  print(f'\ntable and figures: {out}/table.md, table.csv, *.png')
  return table


if __name__ == '__main__':
  cli.run(flags_lib.job_main(_run))
