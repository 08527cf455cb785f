"""Starts one TFF worker service for `--executor=remote` (see docs/executors.md).

  bazel run //runners:worker -- --port=8000

The service is TFF's own C++ executor (`worker_binary` of the installed
tensorflow-federated, the process TFF's local runtime starts too). It serves
gRPC on all interfaces of this machine until stopped (Ctrl-C). The driver
reaches it with `--executor=remote --workers=<this host>:8000`; workers need
the same tensorflow-federated version as the driver, and no data: the driver
sends each worker its clients' datasets as serialized computations.
"""

from runners import cli  # First: TensorFlow without its start-up noise.
import importlib.util
import os
import signal
import sys

from absl import app
from absl import flags

from partial_personalization.execution import worker_config

_PORT = flags.DEFINE_integer('port', 8000, 'gRPC port to serve on.')
_MAX_CALLS = flags.DEFINE_integer(
    'max_concurrent_computation_calls', 0,
    'Clients this worker trains at once (0: two per core; < 0: no limit).')


def worker_binary_path() -> str:
  """The installed TFF's worker binary, found without importing TFF (seconds)."""
  spec = importlib.util.find_spec('tensorflow_federated')
  if spec is None:
    return ''
  return os.path.join(spec.submodule_search_locations[0], 'data', 'worker_binary')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not 0 < _PORT.value < 65536:
    raise app.UsageError(f'--port must be in 1..65535, got {_PORT.value}')
  binary = worker_binary_path()
  if not os.path.isfile(binary):
    print(f'error: TFF worker binary not found at {binary}; reinstall tensorflow-federated '
          '(tools/bootstrap.sh)', file=sys.stderr)
    sys.exit(2)
  print(f'TFF worker serving on port {_PORT.value} (Ctrl-C stops it)', flush=True)
  # exec: signals (Ctrl-C, SIGTERM) reach the service itself, no orphan left.
  # A worker started in the background by a script inherits SIGINT ignored,
  # and exec keeps that; make Ctrl-C / kill -INT stop it again.
  signal.signal(signal.SIGINT, signal.SIG_DFL)
  calls = _MAX_CALLS.value or worker_config.default_concurrent_calls()
  os.environ.update(worker_config.worker_environment(calls))
  os.execv(binary, [binary, f'--port={_PORT.value}',
                    f'--max_concurrent_computation_calls={calls}'])


if __name__ == '__main__':
  cli.run(main)
