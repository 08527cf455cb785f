"""The main job: FedAvg, FedAlt and FedSim on the real Stack Exchange dumps,
with 95% intervals over seeds.

1. Convert the dumps (`--dump_dirs`) to TFF's StackOverflow format (once).
2. FedAvg pretraining of the global model (`--pretrain_rounds`), TFF's
   `build_weighted_fed_avg`, one model for every seed.
3. For each of `--seeds`, from that model, `--rounds` more rounds of each of:
   FedAvg (the non-personalized baseline, trained as long), FedAlt and FedSim
   with `--personalization` (the paper's "output layer": `last_block`).
4. The paper's evaluation protocol (Pillutla et al., Sec. 5): each client's
   personal part finetuned `--finetune_epochs` on its train split, then its
   test accuracy; "FedAvg + finetune" finetunes the same part of FedAvg's
   model. Every run is compared per client with FedAvg of the same seed.
5. The report: per-seed tables, then each row as mean and 95% interval over
   seeds, and the differences paired by seed (summary.md/.csv, report.png).

Seeds vary client sampling, data shuffles and the finetuning shuffles of the
personalization stage; the pretrained model is shared (its cost is most of
the budget), so the intervals cover the personalization stage, not the
pretraining. Every stage resumes where it stopped when the command is run again.
"""

from runners import cli  # First: TensorFlow without its start-up noise.
import os

from absl import app
from absl import flags
import pandas as pd

from partial_personalization import evaluation
from partial_personalization import plots
from runners import flags_lib
from runners import paths
from runners import config_lib
from runners import train_lib

flags_lib.define_executor_flags()
# `--help` lists the flags defined in flags_lib, not only this module's.
flags.adopt_module_key_flags(flags_lib)
_DUMP_DIRS = flags.DEFINE_list('dump_dirs', ['../shared/data/stackexchange'],
                               'Stack Exchange site folders, or folders of them.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'output/main_job', 'Where runs and the report go.')
_MIN_EXAMPLES = flags.DEFINE_integer(
    'min_examples', 500, 'Sentences a client needs to be kept (500: the 55 largest clients; '
    '200: 180 clients of all 18 sites).')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds of the personalization stage; '
                           'rows are reported as mean and 95% interval over them (>= 2).')
_PRETRAIN_ROUNDS = flags.DEFINE_integer('pretrain_rounds', 36, 'FedAvg pretraining rounds.')
_PRETRAIN_CLIENTS = flags.DEFINE_integer(
    'pretrain_clients_per_round', 4, 'Clients per pretraining round: few clients with '
    'more local work train the most per second (docs/results.md, the recipe).')
_PRETRAIN_LR = flags.DEFINE_float('pretrain_learning_rate', 0.003,
                                  'Local learning rate of pretraining.')
_PRETRAIN_EXAMPLES = flags.DEFINE_integer('pretrain_max_examples', 512,
                                          'Examples a client uses per pretraining round.')
_ROUNDS = flags.DEFINE_integer('rounds', 4, 'Rounds of each run after pretraining.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 8, 'Clients per round.')
_PERSONALIZATION = flags.DEFINE_string('personalization', 'last_block', 'Personal part.')
_MODEL_SIZE = flags.DEFINE_string('model_size', 'tiny', 'tiny or mini.')
_CLIENT_OPTIMIZER = flags.DEFINE_string('client_optimizer', 'adam', 'Local optimizer.')
_CLIENT_LR = flags.DEFINE_float('client_learning_rate', 0.001, 'Local learning rate of u '
                                 '(and of v, and of the finetuning before test).')
_PERSONAL_LR = flags.DEFINE_float('personal_learning_rate', None,
                                  'Local learning rate of v (default: client_learning_rate).')
_CLIP_NORM = flags.DEFINE_float('clip_norm', 0.0, 'Global-norm clipping of local steps.')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples_per_client', 128, 'Examples a client uses '
                                     'per round (and in the finetuning before test).')
_ROUNDS_PER_EVAL = flags.DEFINE_integer(
    'rounds_per_eval', 2, 'Heldout evaluation every k rounds of each run (curves in '
    'TensorBoard and metrics.csv; 0: never).')
_PRETRAIN_ROUNDS_PER_EVAL = flags.DEFINE_integer(
    'pretrain_rounds_per_eval', 6, 'Heldout evaluation every k pretraining rounds.')
_FINETUNE_EPOCHS = flags.DEFINE_integer(
    'finetune_epochs', 1, 'Epochs of finetuning of each personal part before test.')


def _config(name, seed, **kwargs) -> config_lib.TrainConfig:
  out = paths.resolve_path(_OUTPUT_DIR.value)
  common = dict(
      root_output_dir=out, cache_dir=os.path.join(out, 'data'),
      model_size=_MODEL_SIZE.value, client_optimizer=_CLIENT_OPTIMIZER.value,
      client_learning_rate=_CLIENT_LR.value, personal_learning_rate=_PERSONAL_LR.value,
      clip_norm=_CLIP_NORM.value, clients_per_round=_CLIENTS_PER_ROUND.value,
      total_rounds=_ROUNDS.value, max_examples_per_client=_MAX_EXAMPLES.value, seed=seed,
      rounds_per_checkpoint=5, rounds_per_eval=_ROUNDS_PER_EVAL.value)
  common.update(kwargs)
  return config_lib.TrainConfig(experiment_name=name, **common)


def _seed_runs(seed: int, out: str, pretrain: str) -> dict:
  """The runs of one seed: name -> config, in the order they must run."""
  fedavg = os.path.join(out, f'seed{seed}', 'fedavg')
  runs = {
      'fedavg': _config(f'seed{seed}/fedavg', seed, algorithm='fedavg',
                        personalization='none', init_from=pretrain),
      # FedAvg + finetune: no training, the report finetunes the same part.
      'fedavg_finetune': _config(
          f'seed{seed}/fedavg_finetune', seed, algorithm='fedavg', personalization='none',
          total_rounds=0, init_from=fedavg, baseline_model=fedavg,
          finetune_epochs=_FINETUNE_EPOCHS.value,
          finetune_personalization=_PERSONALIZATION.value),
  }
  for algorithm in ('fedalt', 'fedsim'):
    runs[algorithm] = _config(
        f'seed{seed}/{algorithm}', seed, algorithm=algorithm,
        personalization=_PERSONALIZATION.value, init_from=pretrain, baseline_model=fedavg,
        finetune_epochs=_FINETUNE_EPOCHS.value)
  return runs


def _train(name: str, config: config_lib.TrainConfig) -> dict:
  print(f'== {name}: {config.algorithm}, personalization={config.personalization}, '
        f'{config.total_rounds} rounds x {config.clients_per_round} clients, '
        f'seed {config.seed}')
  result = train_lib.train(config)
  print(f"   {result['shared_parameters']:,} shared and {result['personal_parameters']:,} "
        f"personal parameters; {result['rounds_run']} rounds in {result['seconds']:.0f} s")
  return result


def _rows(seed: int, summaries: dict) -> list[dict]:
  """One row per run of a seed; FedAvg's row is the baseline column."""
  any_summary = next(iter(summaries.values()))
  rows = [{'run': 'fedavg', 'seed': seed, 'personalized_mean': any_summary['baseline_mean'],
           'personalized_p10': any_summary['baseline_p10']}]
  for name, s in summaries.items():
    rows.append({'run': name, 'seed': seed, **{k: v for k, v in s.items()
                                               if not isinstance(v, dict)}})
  return rows


def _run():
  seeds = [int(s) for s in _SEEDS.value]
  if len(seeds) < 2 or len(set(seeds)) != len(seeds):
    raise app.UsageError('--seeds needs at least 2 distinct seeds (intervals over seeds)')
  out = paths.resolve_path(_OUTPUT_DIR.value)
  data_dir = os.path.join(out, 'data')
  flags_lib.ensure_converted(_DUMP_DIRS.value, data_dir, _MIN_EXAMPLES.value)
  pretrain = os.path.join(out, 'fedavg_pretrain')
  rows, per_client, tables = [], {}, []
  with flags_lib.tff_runtime():
    _train('fedavg_pretrain', _config(
        'fedavg_pretrain', seeds[0], algorithm='fedavg', personalization='none',
        total_rounds=_PRETRAIN_ROUNDS.value, clients_per_round=_PRETRAIN_CLIENTS.value,
        client_learning_rate=_PRETRAIN_LR.value, max_examples_per_client=_PRETRAIN_EXAMPLES.value,
        server_lr_schedule='warmup_decay', server_warmup_fraction=0.0,
        rounds_per_eval=_PRETRAIN_ROUNDS_PER_EVAL.value))
    for seed in seeds:
      summaries = {}
      for name, config in _seed_runs(seed, out, pretrain).items():
        result = _train(name, config)
        if result['summary']:
          summaries[name] = result['summary']
          if seed == seeds[0]:
            per_client[name] = pd.read_csv(
                os.path.join(config.run_dir, 'report', 'per_client.csv'), index_col=0)
      rows += _rows(seed, summaries)
      tables.append(f'### seed {seed}\n\n{evaluation.format_summaries(summaries)}')
  per_seed = pd.DataFrame(rows)
  per_seed.to_csv(os.path.join(out, 'per_seed.csv'), index=False)
  columns = ['personalized_mean', 'personalized_p10', 'helped_fraction', 'hurt_fraction',
             'unchanged_fraction', 'gated_personalized_mean', 'gated_hurt_fraction']
  runs, differences = evaluation.over_seeds(
      per_seed, columns=columns, baseline='fedavg',
      pairs=[('fedalt', 'fedavg_finetune'), ('fedsim', 'fedavg_finetune'),
             ('fedalt', 'fedsim')])
  runs.to_csv(os.path.join(out, 'summary.csv'))
  differences.to_csv(os.path.join(out, 'differences.csv'))
  table = evaluation.format_over_seeds(runs, differences)
  with open(os.path.join(out, 'summary.md'), 'w') as f:
    f.write(f'## Over seeds {seeds}: mean [95% interval]\n\n{table}\n\n'
            + '\n\n'.join(tables) + '\n')
  plots.plot_personalization(per_client, os.path.join(out, 'report.png'))
  print('\nPer-client test accuracy after finetuning each personal part '
        f'{_FINETUNE_EPOCHS.value} epoch(s), against FedAvg trained as long; means and '
        '10th percentiles weighted by test tokens.\n')
  print('\n\n'.join(tables))
  print(f'\nOver seeds {seeds}: mean [95% interval] (Student t)\n')
  print(table)
  print(f'\nreport: {out}/summary.md, summary.csv, differences.csv, per_seed.csv, report.png, '
        '<seed>/<run>/report/per_client.csv')


if __name__ == '__main__':
  cli.run(flags_lib.job_main(_run))
