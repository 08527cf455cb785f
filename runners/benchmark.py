"""Rounds per second and peak memory of each executor, and TFF's overhead.

  bazel run //runners:benchmark -- --model_sizes=tiny,mini --clients_per_round=10,50

Each case runs in a fresh process (see runners/benchmark_lib.py); results are
appended to <output_dir>/benchmark.csv as they come (a rerun skips finished
cases) and the table goes to benchmark.md and stdout.
"""

import os

from absl import app
from absl import flags

from partial_personalization import runtime
from runners import benchmark_lib
from runners import flags_lib
from runners import paths

_EXECUTORS = flags.DEFINE_list('executors', list(benchmark_lib.CASE_EXECUTORS),
                               'Executors to measure; local_serial: local with '
                               '--max_concurrent_computation_calls=1; plain_tf: the same local '
                               'training without TFF.')
_MODEL_SIZES = flags.DEFINE_list('model_sizes', ['tiny', 'mini'], 'StackOverflow model sizes.')
_CLIENTS = flags.DEFINE_list('clients_per_round', ['10', '50'], 'Clients per round.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Timed rounds per case (after the warm-up).')
_WARMUP = flags.DEFINE_integer('warmup_rounds', 1, 'Untimed first rounds (tracing, compilation).')
_MAX_EXAMPLES = flags.DEFINE_integer('max_examples_per_client', 64,
                                     'Examples per client per round.')
_NUM_WORKERS = flags.DEFINE_integer('num_workers', 2, 'remote: TFF workers started on this '
                                    'machine for each case.')
_LOGICAL_CPUS = flags.DEFINE_integer('logical_cpus', 2, 'accelerated without GPUs: logical '
                                     'CPU devices the clients are spread over.')
_DUMP_DIRS = flags.DEFINE_list('dump_dirs', ['../shared/data/stackexchange'],
                               'Stack Exchange dumps, converted once into <output_dir>/data.')
_OUTPUT_DIR = flags.DEFINE_string('output_dir', 'output/benchmark', 'Results folder.')


def _run():
  for name in _EXECUTORS.value:
    if name not in benchmark_lib.CASE_EXECUTORS:
      raise ValueError(f'--executors: unknown {name!r}; known: {benchmark_lib.CASE_EXECUTORS}')
  out = paths.resolve_path(_OUTPUT_DIR.value)
  data_dir = os.path.join(out, 'data')
  flags_lib.convert_if_missing(_DUMP_DIRS.value, data_dir, min_examples=200)  # as the main job
  settings = benchmark_lib.Settings(
      data_dir=data_dir, rounds=_ROUNDS.value, warmup_rounds=_WARMUP.value,
      max_examples_per_client=_MAX_EXAMPLES.value, num_workers=_NUM_WORKERS.value,
      logical_cpus=_LOGICAL_CPUS.value)
  cases = [benchmark_lib.Case(e, size, int(m)) for size in _MODEL_SIZES.value
           for m in _CLIENTS.value for e in _EXECUTORS.value]
  with flags_lib.tff_runtime(runtime.ExecutorConfig()):  # Cases run in child processes.
    table = benchmark_lib.run(cases, settings, out)
  print('\n' + benchmark_lib.to_markdown(table))
  print(f'\nresults: {out}/benchmark.csv, benchmark.md')


if __name__ == '__main__':
  app.run(flags_lib.job_main(_run))
