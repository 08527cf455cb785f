"""Training and evaluation throughput against a plain-TensorFlow floor.

  bazel run //benchmarks:benchmark -- --model_sizes=tiny,mini --clients_per_round=12,50
  bazel run //benchmarks:benchmark -- --profile
  bazel run //benchmarks:benchmark -- --store --store_clients=10k,30k,100k
  bazel run //benchmarks:benchmark -- --converter --converter_sizes_mb=32,128,512

For each algorithm (FedAvg, FedAlt, the report's evaluation), model size and
number of clients, runs the executors and the two plain-TensorFlow floors,
each case in a fresh process (see benchmarks/benchmark_lib.py). Results are
appended to <output_dir>/benchmark.csv as they come (a rerun skips finished
cases); the table goes to benchmark.md and stdout. `--store`: the client-state
store at population scale instead (benchmarks/store_benchmark_lib.py), to store.md;
`--converter`: the converter and caches on synthetic dumps of growing size
(benchmarks/converter_benchmark_lib.py), to converter.md.
"""

from runners import cli  # First: TensorFlow without its start-up noise.
import os

from absl import flags

from partial_personalization.execution import runtime
from benchmarks import benchmark_lib
from benchmarks import converter_benchmark_lib
from runners import flags_lib
from runners import paths
from benchmarks import profile_lib
from benchmarks import store_benchmark_lib

_EXECUTORS = flags.DEFINE_list(
    'executors', ['local', benchmark_lib.PLAIN_TF, benchmark_lib.PLAIN_TF_PARALLEL],
    f'Executors to measure, of {benchmark_lib.CASE_EXECUTORS}. local_serial: local with '
    '--max_concurrent_computation_calls=1; plain_tf, plain_tf_parallel: the floors.')
_ALGORITHMS = flags.DEFINE_list('algorithms', list(benchmark_lib.ALGORITHMS),
                                'fedavg, fedalt (last_block personal), evaluation.')
_MODEL_SIZES = flags.DEFINE_list('model_sizes', ['tiny', 'mini'], 'StackOverflow model sizes.')
_CLIENTS = flags.DEFINE_list('clients_per_round', ['12', '50'], 'Clients per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 2, 'Timed rounds per case (after the warm-up).')
_WARMUP = flags.DEFINE_integer('warmup_rounds', 1, 'Untimed first rounds (tracing, compilation).')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples_per_client', 128,
                                     'Examples (sentences) per client per round.')
_EVAL_CLIENTS = flags.DEFINE_integer('eval_clients', 64,
                                     'Evaluation cases: clients per federated call.')
_NUM_WORKERS = flags.DEFINE_integer('num_workers', 2, 'remote: TFF workers started on this '
                                    'machine for each case.')
_PIN_WORKERS = flags.DEFINE_bool('pin_workers', True, 'remote: worker k runs on core k only, '
                                  'as on its own machine.')
_LOGICAL_CPUS = flags.DEFINE_integer('logical_cpus', 2, 'accelerated without GPUs: logical '
                                     'CPU devices the clients are spread over.')
_DUMP_DIRS = flags.DEFINE_list('dump_dirs', ['../shared/data/stackexchange'],
                               'Stack Exchange dumps, converted once into <output_dir>/data.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'output/benchmark', 'Results folder.')
_GRAPPLER = flags.DEFINE_bool(
    'grappler', True, 'TensorFlow\'s graph optimizer on (default) or off (--nograppler), '
    'in the floors and in TFF\'s computations alike. Rows of both settings can share '
    'one --output_dir; "x floor" is against the fastest floor of either.')
_PROFILE = flags.DEFINE_bool('profile', False, 'Instead of the cases: where one round\'s '
                             'per-client time goes (benchmarks/profile_lib.py), to profile.md.')
_STORE = flags.DEFINE_bool('store', False, 'Instead of the cases: the client-state store '
                           'filled for each of --store_clients (open, a round\'s work, resume '
                           'after kill -9, memory), to store.md.')
_STORE_CLIENTS = flags.DEFINE_list('store_clients', ['10k', '30k', '100k'],
                                   'Populations of the --store case (~134 KB per client: '
                                   '100k is 13 GB of disk).')
_STORE_VERIFY = flags.DEFINE_bool('store_verify', True, 'With --store: also time the full '
                                  'on-demand check (reads the whole store).')

_CONVERTER = flags.DEFINE_bool('converter', False, 'Instead of the cases: the converter, the '
                               'data hash and the token-id cache on synthetic Posts.xml files of '
                               '--converter_sizes_mb, to converter.md.')
_CONVERTER_SIZES = flags.DEFINE_list('converter_sizes_mb', ['32', '128', '512'],
                                     'Sizes of the synthetic Posts.xml files (MB).')


def _write_table(out: str, name: str, table, text: str) -> None:
  os.makedirs(out, exist_ok=True)
  table.to_csv(os.path.join(out, f'{name}.csv'), index=False)
  with open(os.path.join(out, f'{name}.md'), 'w') as f:
    f.write(text + '\n')
  print('\n' + text + f'\n\nresults: {out}/{name}.csv, {name}.md')


def _converter():
  try:
    sizes = tuple(int(s) for s in _CONVERTER_SIZES.value)
  except ValueError as e:
    raise ValueError(f'--converter_sizes_mb takes integers (MB): {e}') from e
  settings = converter_benchmark_lib.ConverterSettings(
      out_dir=paths.resolve_path(_OUTPUT_DIR.value),
      dump_dirs=tuple(paths.resolve_path(d) for d in _DUMP_DIRS.value), sizes_mb=sizes)
  table = converter_benchmark_lib.run(settings)
  _write_table(settings.out_dir, 'converter', table, converter_benchmark_lib.to_markdown(table))


def _store():
  settings = store_benchmark_lib.StoreSettings(
      out_dir=paths.resolve_path(_OUTPUT_DIR.value),
      populations=store_benchmark_lib.populations(_STORE_CLIENTS.value),
      clients_per_round=int(_CLIENTS.value[-1]))
  table = store_benchmark_lib.run(settings, verify=_STORE_VERIFY.value)
  _write_table(settings.out_dir, 'store', table, store_benchmark_lib.to_markdown(table, settings))


def _run():
  if _STORE.value:
    return _store()
  if _CONVERTER.value:
    return _converter()
  for name in _EXECUTORS.value:
    if name not in benchmark_lib.CASE_EXECUTORS:
      raise ValueError(f'--executors: unknown {name!r}; known: {benchmark_lib.CASE_EXECUTORS}')
  for name in _ALGORITHMS.value:
    if name not in benchmark_lib.ALGORITHMS:
      raise ValueError(f'--algorithms: unknown {name!r}; known: {benchmark_lib.ALGORITHMS}')
  out = paths.resolve_path(_OUTPUT_DIR.value)
  data_dir = os.path.join(out, 'data')
  flags_lib.ensure_converted(_DUMP_DIRS.value, data_dir, min_examples=200)  # 180 clients
  settings = benchmark_lib.Settings(
      data_dir=data_dir, rounds=_ROUNDS.value, warmup_rounds=_WARMUP.value,
      max_examples_per_client=_MAX_EXAMPLES.value, eval_clients=_EVAL_CLIENTS.value,
      num_workers=_NUM_WORKERS.value, pin_workers=_PIN_WORKERS.value,
      logical_cpus=_LOGICAL_CPUS.value,
      grappler=_GRAPPLER.value)
  if _PROFILE.value:
    with flags_lib.tff_runtime(runtime.ExecutorConfig()):  # It runs in a child process.
      table = profile_lib.profile(profile_lib.ProfileSettings(
          data_dir=data_dir, clients=int(_CLIENTS.value[0]),
          max_batches=max(2, _MAX_EXAMPLES.value // 16), eval_clients=_EVAL_CLIENTS.value))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, 'profile.md'), 'w') as f:
      f.write(profile_lib.to_markdown(table) + '\n')
    print('\n' + profile_lib.to_markdown(table))
    return
  cases = []
  for algorithm in _ALGORITHMS.value:
    for size in _MODEL_SIZES.value:
      # Evaluation has one configuration per model: --eval_clients.
      for m in (_CLIENTS.value if algorithm != 'evaluation' else _CLIENTS.value[:1]):
        cases += [benchmark_lib.Case(e, algorithm, size, int(m)) for e in _EXECUTORS.value]
  with flags_lib.tff_runtime(runtime.ExecutorConfig()):  # Cases run in child processes.
    table = benchmark_lib.run(cases, settings, out)
  print('\n' + benchmark_lib.to_markdown(table))
  print(f'\nresults: {out}/benchmark.csv, benchmark.md')


if __name__ == '__main__':
  cli.run(flags_lib.job_main(_run))
