"""The main job: FedAvg, FedAlt and FedSim on the real Stack Exchange dumps.

1. Convert the dumps (`--dump_dirs`) to TFF's StackOverflow format (once).
2. FedAvg pretraining (`--pretrain_rounds`), TFF's `build_weighted_fed_avg`.
3. From that model, `--rounds` more rounds of each of: FedAvg (the
   non-personalized baseline, same total rounds), FedAlt and FedSim with
   `--personalization` (the paper's "output layer": `last_block`).
4. The per-client report of FedAlt and FedSim against that baseline: table
   (printed, summary.md/.csv) and figure (report.png) in `--output_dir`.

Every stage resumes where it stopped when the command is run again.
"""

import os

from absl import app
from absl import flags
import pandas as pd

from partial_personalization import evaluation
from partial_personalization import plots
from runners import flags_lib
from runners import paths
from runners import train_lib

flags_lib.define_executor_flags()
_DUMP_DIRS = flags.DEFINE_list('dump_dirs', ['../shared/data/stackexchange'],
                               'Stack Exchange site folders, or folders of them.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'output/main_job', 'Where runs and the report go.')
_MIN_EXAMPLES = flags.DEFINE_integer(
    'min_examples', 200, 'Sentences a client needs to be kept. 200 keeps 180 '
    'clients of all 18 sites, few enough that most train their personal part '
    'at least once in the default budget.')
_PRETRAIN_ROUNDS = flags.DEFINE_integer('pretrain_rounds', 25, 'FedAvg pretraining rounds.')
_ROUNDS = flags.DEFINE_integer('rounds', 20, 'Rounds of each run after pretraining.')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', 12, 'Clients per round.')
_PERSONALIZATION = flags.DEFINE_string('personalization', 'last_block', 'Personal part.')
_MODEL_SIZE = flags.DEFINE_string('model_size', 'tiny', 'tiny or mini.')
_CLIENT_LR = flags.DEFINE_float('client_learning_rate', 0.5, 'Local SGD learning rate.')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples_per_client', 128,
                                     'Examples a client uses per round.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed.')


def _config(name, **kwargs) -> train_lib.TrainConfig:
  out = paths.resolve_path(_OUTPUT_DIR.value)
  common = dict(
      root_output_dir=out, cache_dir=os.path.join(out, 'data'),
      model_size=_MODEL_SIZE.value, client_learning_rate=_CLIENT_LR.value,
      clients_per_round=_CLIENTS_PER_ROUND.value, total_rounds=_ROUNDS.value,
      max_examples_per_client=_MAX_EXAMPLES.value, seed=_SEED.value,
      rounds_per_checkpoint=5)
  common.update(kwargs)
  return train_lib.TrainConfig(experiment_name=name, **common)


def _run():
  out = paths.resolve_path(_OUTPUT_DIR.value)
  data_dir = os.path.join(out, 'data')
  flags_lib.convert_if_missing(_DUMP_DIRS.value, data_dir, _MIN_EXAMPLES.value)
  pretrain = os.path.join(out, 'fedavg_pretrain')
  runs = {
      'fedavg_pretrain': _config('fedavg_pretrain', algorithm='fedavg', personalization='none',
                                 total_rounds=_PRETRAIN_ROUNDS.value,
                                 clients_per_round=10),
      'fedavg': _config('fedavg', algorithm='fedavg', personalization='none', init_from=pretrain),
  }
  for algorithm in ('fedalt', 'fedsim'):
    runs[algorithm] = _config(
        algorithm, algorithm=algorithm, personalization=_PERSONALIZATION.value,
        init_from=pretrain, baseline_model=os.path.join(out, 'fedavg'))
  summaries, per_client = {}, {}
  with flags_lib.tff_runtime():
    for name, config in runs.items():
      print(f'== {name}: {config.algorithm}, personalization={config.personalization}, '
            f'{config.total_rounds} rounds x {config.clients_per_round} clients')
      result = train_lib.train(config)
      print(f"   {result['shared_parameters']:,} shared and {result['personal_parameters']:,} "
            f"personal parameters; {result['rounds_run']} rounds in {result['seconds']:.0f} s")
      if result['summary']:
        summaries[name] = result['summary']
        per_client[name] = pd.read_csv(
            os.path.join(config.run_dir, 'report', 'per_client.csv'), index_col=0)
  table = evaluation.format_summaries(summaries)
  with open(os.path.join(out, 'summary.md'), 'w') as f:
    f.write(table + '\n')
  pd.DataFrame(summaries).T.to_csv(os.path.join(out, 'summary.csv'))
  plots.plot_personalization(per_client, os.path.join(out, 'report.png'))
  print('\nPer-client test accuracy, personalized vs non-personalized (FedAvg, same rounds);'
        '\nmeans and 10th percentiles weighted by test tokens:\n')
  print(table)
  for name in per_client:
    by = pd.read_csv(os.path.join(runs[name].run_dir, 'report', 'by_participations.csv'))
    print(f'\n{name}, by the number of rounds a client trained its personal part:')
    print(by.to_string(index=False, float_format=lambda x: f'{x:.3f}'))
  print(f'\nreport: {out}/summary.md, summary.csv, report.png, <run>/report/per_client.csv')


if __name__ == '__main__':
  app.run(flags_lib.job_main(_run))
