"""The main job: the paper's experiment on the real Stack Exchange dumps, from
the stored pretrained global model, with its three findings decided by 95%
intervals over seeds and clients.

  bazel run //runners:main_job

1. Convert the dumps (`--dump_dirs`, `--min_examples`) to TFF's StackOverflow
   format, once (a folder converted with other settings is refused).
2. The global model: the stored one (`--global_model`, pretrained by
   //runners:pretrain on this same conversion; its manifest is checked against
   the converted data), or `--pretrain_rounds=N` rounds of FedAvg here.
3. For each of `--seeds`: FedAvg trained as long (the baseline), FedAlt and
   FedSim with `--personalization` personal, `--rounds` rounds of
   `--clients_per_round` clients drawn so that every client trains
   rounds * clients_per_round / clients times (balanced sampling).
4. The paper's evaluation protocol and the findings (runners/paper_lib.py):
   finetuning epochs chosen on heldout data, per-client test accuracy, each
   client's change with a paired test over its sentences, differences with
   intervals over seeds and clients.

Outputs in `--output_dir`: summary.md (the findings), summary.csv (one row per
method), differences.csv, hurt.csv, per_client.csv, report.png, and the run
directories. Re-running resumes every stage; a finished job re-runs in seconds.
"""

from runners import cli  # First: TensorFlow without its start-up noise.
import os

from absl import flags
import pandas as pd

from partial_personalization.evaluation import intervals
from partial_personalization.evaluation import plots
from runners import config_lib
from runners import flags_lib
from runners import paper_lib
from runners import paths
from runners import pretrain_lib
from runners import train_lib

flags_lib.define_executor_flags()
# `--help` lists the flags defined in flags_lib, not only this module's.
flags.adopt_module_key_flags(flags_lib)
_DEFAULTS = paper_lib.Settings()
_DUMP_DIRS = flags.DEFINE_list('dump_dirs', ['../shared/data/stackexchange'],
                               'Stack Exchange site folders, or folders of them.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'output/main_job', 'Where runs and the report go.')
_MIN_EXAMPLES = flags.DEFINE_integer(
    'min_examples', 500, 'Sentences a client needs to be kept (500: the 53 largest clients, '
    'the conversion the stored model was pretrained on).')
_GLOBAL_MODEL = flags.DEFINE_string(
    'global_model', pretrain_lib.STORED_MODEL_DIR,
    'The stored pretrained global model (model.npz and manifest.json, from //runners:pretrain).')
_SEEDS = flags.DEFINE_list('seeds', [str(s) for s in _DEFAULTS.seeds],
                           'Seeds of the personalization stage (>= 2; intervals cover them).')
_PRETRAIN_ROUNDS = flags.DEFINE_integer(
    'pretrain_rounds', 0, 'Pretrain the global model here with this many FedAvg rounds '
    'instead of using --global_model (0: the stored model).')
_PRETRAIN_CLIENTS = flags.DEFINE_integer('pretrain_clients_per_round', 4,
                                         'Clients per pretraining round (with --pretrain_rounds).')
_PRETRAIN_LR = flags.DEFINE_float('pretrain_learning_rate', 0.003,
                                  'Local learning rate of pretraining (with --pretrain_rounds).')
_PRETRAIN_EXAMPLES = flags.DEFINE_integer('pretrain_max_examples', 512,
                                          'Examples a client uses per pretraining round.')
_ROUNDS = flags.DEFINE_integer('rounds', _DEFAULTS.rounds, 'Rounds of each run from the '
                               'global model (53 rounds x 10 of 53 clients: 10 participations '
                               'each).')
_CLIENTS_PER_ROUND = flags.DEFINE_integer('clients_per_round', _DEFAULTS.clients_per_round,
                                          'Clients per round.')
_PERSONALIZATION = flags.DEFINE_string('personalization', _DEFAULTS.personalization,
                                       'Personal part of FedAlt and FedSim.')
_MODEL_SIZE = flags.DEFINE_string('model_size', _DEFAULTS.model_size, 'tiny or mini.')
_CLIENT_OPTIMIZER = flags.DEFINE_string('client_optimizer', _DEFAULTS.client_optimizer,
                                        'Local optimizer.')
_CLIENT_LR = flags.DEFINE_float('client_learning_rate', _DEFAULTS.client_learning_rate,
                                'Local learning rate of u (and of v, and of the finetuning).')
_PERSONAL_LR = flags.DEFINE_float('personal_learning_rate', None,
                                  'Local learning rate of v (default: client_learning_rate).')
_CLIP_NORM = flags.DEFINE_float('clip_norm', 0.0, 'Global-norm clipping of local steps.')
_MAX_EXAMPLES = flags.DEFINE_integer(
    'max_examples_per_client', _DEFAULTS.max_examples_per_client,
    'Examples a client uses per round (and per finetuning epoch before test).')
_FINETUNE_EPOCHS = flags.DEFINE_list(
    'finetune_epochs', [str(e) for e in _DEFAULTS.finetune_epochs],
    'Finetuning epochs tried before test; each method uses the best on the first seed\'s '
    'heldout data.')
_FINETUNE_PARTS = flags.DEFINE_list(
    'finetune_parts', list(_DEFAULTS.finetune_parts),
    'Parts finetuned from FedAvg\'s model ("FedAvg + finetune"); e.g. '
    'last_block,first_block,embeddings,adapter,full compares personal parts.')
_ADAPTER_SIZE = flags.DEFINE_integer('adapter_size', _DEFAULTS.adapter_size,
                                     'Bottleneck of the adapter part.')
_TEST_CLIENTS = flags.DEFINE_integer(
    'test_clients', 0, 'Evaluate a seeded sample of this many clients (the same for every '
    'method and seed; 0: every client). For a population of thousands: evaluation grows with '
    'the clients evaluated.')
_ROUNDS_PER_EVAL = flags.DEFINE_integer(
    'rounds_per_eval', 0, 'Heldout evaluation every k rounds of each run (TensorBoard '
    'curves; 0: never, it costs time).')


def _settings() -> paper_lib.Settings:
  try:
    seeds = tuple(int(s) for s in _SEEDS.value)
    epochs = tuple(int(e) for e in _FINETUNE_EPOCHS.value)
  except ValueError as e:
    raise ValueError(f'--seeds and --finetune_epochs take integers: {e}') from e
  return paper_lib.Settings(
      seeds=seeds, rounds=_ROUNDS.value, clients_per_round=_CLIENTS_PER_ROUND.value,
      max_examples_per_client=_MAX_EXAMPLES.value, personalization=_PERSONALIZATION.value,
      model_size=_MODEL_SIZE.value, client_optimizer=_CLIENT_OPTIMIZER.value,
      client_learning_rate=_CLIENT_LR.value, personal_learning_rate=_PERSONAL_LR.value,
      clip_norm=_CLIP_NORM.value, finetune_epochs=epochs,
      finetune_parts=tuple(_FINETUNE_PARTS.value), adapter_size=_ADAPTER_SIZE.value,
      rounds_per_eval=_ROUNDS_PER_EVAL.value, test_clients=_TEST_CLIENTS.value)


def _train(name: str, config: config_lib.TrainConfig) -> dict:
  print(f'== {name}: {config.algorithm}, personalization={config.personalization}, '
        f'{config.total_rounds} rounds x {config.clients_per_round} clients, seed {config.seed}')
  result = train_lib.train(config)
  print(f"   {result['shared_parameters']:,} shared and {result['personal_parameters']:,} "
        f"personal parameters; {result['rounds_run']} rounds in {result['seconds']:.0f} s")
  return result


def _global_model(out: str, data_dir: str, seed: int) -> str:
  """The stored model checked against the data, or one pretrained here."""
  if not _PRETRAIN_ROUNDS.value:
    model = pretrain_lib.stored_model(paths.resolve_path(_GLOBAL_MODEL.value), data_dir)
    manifest = pretrain_lib.read_manifest(os.path.dirname(model))
    last = manifest['heldout'][-1]
    print(f"== global model: {model} ({manifest['rounds']} FedAvg rounds, heldout accuracy "
          f"{last['accuracy']:.2%})")
    return model
  _train('fedavg_pretrain', config_lib.TrainConfig(
      experiment_name='fedavg_pretrain', root_output_dir=out, cache_dir=data_dir,
      algorithm='fedavg', personalization='none', model_size=_MODEL_SIZE.value,
      client_optimizer='adam', client_learning_rate=_PRETRAIN_LR.value,
      total_rounds=_PRETRAIN_ROUNDS.value, clients_per_round=_PRETRAIN_CLIENTS.value,
      max_examples_per_client=_PRETRAIN_EXAMPLES.value, server_lr_schedule='warmup_decay',
      server_warmup_fraction=0.0, seed=seed, report=False))
  return os.path.join(out, 'fedavg_pretrain')


def _percent(x: float) -> str:
  return f'{x:.2%}'


def _markdown(settings, found, participations_line) -> str:
  rows, diffs, hurt = found['rows'], found['differences'], found['hurt']
  lines = ['| method | mean test accuracy [95% interval] | per seed | finetune epochs '
           '(heldout) |', '|---|---|---|---|']
  for m, r in rows.iterrows():
    lines.append(f'| {m} | {_percent(r.accuracy)} [{_percent(r.low)}, {_percent(r.high)}] | '
                 f'{r.per_seed} | {r.finetune_epochs} |')
  lines += ['', '| difference | mean [95% interval over seeds and clients] | per seed (pt) | '
            'decided |', '|---|---|---|---|']
  for name, d in diffs.iterrows():
    if d.decided == 'share':
      cell = f'{d.difference:.0%} [{d.low:.0%}, {d.high:.0%}]'
    else:
      cell = intervals.format_interval(d.difference, d.low, d.high)
    lines.append(f'| {name} | {cell} | {d.per_seed} | {d.decided} |')
  table = hurt.groupby('method')[['hurt_raw', 'hurt_significant', 'helped_significant']].mean()
  lines += ['', '| against FedAvg | hurt (raw) | hurt significantly | helped significantly |',
            '|---|---|---|---|']
  for m, r in table.iterrows():
    lines.append(f'| {m} | {r.hurt_raw:.1%} | {r.hurt_significant:.1%} | '
                 f'{r.helped_significant:.1%} |')
  lines += ['', participations_line]
  return '\n'.join(lines)


def _verdicts(settings, found) -> list[str]:
  d = found['differences']
  out = []
  ft = f'finetune:{settings.personalization}'
  for m in ('fedalt', 'fedsim', ft):
    key = f'{m} - fedavg'
    if key in d.index:
      r = d.loc[key]
      out.append(f'{m} - FedAvg: {intervals.format_interval(r.difference, r.low, r.high)} '
                 f'({r.decided})')
  for key in ('fedalt - fedsim', f'fedalt - {ft}', f'fedsim - {ft}'):
    if key in d.index:
      r = d.loc[key]
      out.append(f'{key}: {intervals.format_interval(r.difference, r.low, r.high)} '
                 f'({r.decided})')
  for key in [n for n in d.index if n.endswith(' - finetune:full')]:
    r = d.loc[key]
    out.append(f'{key} (partial against full finetuning): '
               f'{intervals.format_interval(r.difference, r.low, r.high)} ({r.decided})')
  shares = [n for n in d.index if n.startswith('share of full')]
  for key in shares:
    r = d.loc[key]
    out.append(f'{key}: {r.difference:.0%} [{r.low:.0%}, {r.high:.0%}]')
  hurt = found['hurt'].groupby('method')[['hurt_raw', 'hurt_significant']].mean()
  for m, r in hurt.iterrows():
    out.append(f'{m} hurts {r.hurt_raw:.1%} of clients (raw), {r.hurt_significant:.1%} '
               'significantly (95% interval over its sentences below 0)')
  return out


def _run():
  settings = flags_lib.exit_on_user_error(_settings)
  out = paths.resolve_path(_OUTPUT_DIR.value)
  data_dir = os.path.join(out, 'data')
  flags_lib.ensure_converted(_DUMP_DIRS.value, data_dir, _MIN_EXAMPLES.value)
  configs = {}
  with flags_lib.tff_runtime():
    init_from = _global_model(out, data_dir, settings.seeds[0])
    for seed in settings.seeds:
      configs[seed] = paper_lib.run_configs(settings, seed, out, data_dir, init_from)
      for name, config in configs[seed].items():
        _train(name, config)
    print('== evaluation: finetuning epochs chosen on heldout (first seed), test per client')
    evaluated = paper_lib.evaluate_all(settings, configs, out)
  found = paper_lib.findings(settings, evaluated)
  found['rows'].to_csv(os.path.join(out, 'summary.csv'))
  found['differences'].to_csv(os.path.join(out, 'differences.csv'))
  found['hurt'].to_csv(os.path.join(out, 'hurt.csv'), index=False)
  found['per_client'].to_csv(os.path.join(out, 'per_client.csv'), index=False)
  p = found['participations']
  participations_line = 'Participations per client (personal part trained): ' + '; '.join(
      f'{m}: min {r["min"]:.0f}, median {r["50%"]:.0f}, max {r["max"]:.0f}'
      for m, r in p.iterrows())
  table = _markdown(settings, found, participations_line)
  verdicts = _verdicts(settings, found)
  with open(os.path.join(out, 'summary.md'), 'w') as f:
    f.write(f'## Findings (seeds {list(settings.seeds)}; 95% intervals over seeds and '
            'clients)\n\n' + '\n'.join(f'- {v}' for v in verdicts) + f'\n\n{table}\n')
  seed0 = found['per_client'][found['per_client'].seed == settings.seeds[0]]
  frames = {}
  for m in ['fedalt', 'fedsim', f'finetune:{settings.personalization}']:
    df = seed0[seed0.method == m].set_index('client_id')
    if len(df):
      frames[m] = pd.DataFrame({'personalized': df.accuracy, 'baseline': df.baseline,
                                'delta': df.accuracy - df.baseline, 'tokens': df.tokens})
  plots.plot_personalization(frames, os.path.join(out, 'report.png'))
  print('\nPer-client test accuracy (means weighted by test tokens), against FedAvg trained '
        'as long; 95% intervals over seeds and clients (two-level paired bootstrap).\n')
  print(table)
  print('\nFindings:\n' + '\n'.join(f'  {v}' for v in verdicts))
  print(f'\nreport: {out}/summary.md, summary.csv, differences.csv, hurt.csv, per_client.csv, '
        'report.png')


if __name__ == '__main__':
  cli.run(flags_lib.job_main(_run))
