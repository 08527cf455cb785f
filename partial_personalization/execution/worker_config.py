"""Thread and concurrency settings of TFF's C++ worker (local or remote).

Kept free of TensorFlow imports so `runners/worker.py` can use it and exec
the worker binary at once.
"""

import os


def available_cores() -> int:
  """Cores this process may run on (its CPU affinity: `taskset`, containers),
  not the machine's count."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):  # Not Linux.
    return os.cpu_count() or 1


def default_concurrent_calls(cores: int = 0) -> int:
  """Clients a worker trains at once by default: two per core (`cores`, 0:
  `available_cores()`), so a core never waits for a client between steps;
  more in flight only add memory."""
  return 2 * (cores or available_cores())


def worker_environment(concurrent_calls: int, cores: int = 0) -> dict[str, str]:
  """TensorFlow thread settings of a worker running `concurrent_calls` clients.

  Each client computation in flight holds inter-op threads while it waits
  (function calls, loops, dataset reads); with TensorFlow's default of one
  inter-op thread per core, a round's clients starve the pool and the worker
  idles at one core or less (docs/benchmarks.md). Intra-op parallelism inside
  one client only adds synchronization when several clients already keep
  every core busy. Variables the user has set are left alone. `cores`: those
  the worker runs on (0: `available_cores()`); a worker pinned to one core
  with TensorFlow's default pools stalls for seconds per round.
  """
  cores = cores or available_cores()
  calls = concurrent_calls if concurrent_calls > 0 else 16
  env = {'TF_NUM_INTEROP_THREADS': str(4 * calls + cores)}
  if calls >= cores:
    env['TF_NUM_INTRAOP_THREADS'] = '1'
  return {k: v for k, v in env.items() if k not in os.environ}
