"""absl flags of the runners (TFF research conventions) and the TFF runtime lifecycle."""

import contextlib
import dataclasses
import re
import signal
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging

from partial_personalization.execution import runtime
from partial_personalization.programs import training_loop
from partial_personalization.state import client_state
from partial_personalization.state import run_lock
from runners import config_lib
from runners import paths
from tasks.stackoverflow import convert_lib

FLAGS = flags.FLAGS

def define_executor_flags():
  """--executor and its settings (runtime.ExecutorConfig); none changes results."""
  flags.DEFINE_enum('executor', 'local', runtime.EXECUTORS,
                    'Where computations run: local (TFF C++ runtime), remote (TFF workers '
                    'given by --workers) or accelerated (TensorFlow on GPUs / logical CPUs).')
  flags.DEFINE_integer('max_concurrent_computation_calls', 0,
                       'local: clients trained at once by the C++ runtime (0: two per core; '
                       '< 0: no limit).')
  flags.DEFINE_list('workers', [], 'remote: host:port of each TFF worker '
                    '(bazel run //runners:worker -- --port=PORT on each machine).')
  flags.DEFINE_list('client_devices', [], 'accelerated: TensorFlow devices of client work, '
                    'e.g. GPU:0,GPU:1 (default: all GPUs, else all logical CPUs).')
  flags.DEFINE_string('server_device', None,
                      'accelerated: device of the server update (default: first client device).')


def executor_config_from_flags() -> runtime.ExecutorConfig:
  return runtime.ExecutorConfig(
      executor=FLAGS.executor,
      max_concurrent_computation_calls=FLAGS.max_concurrent_computation_calls,
      workers=tuple(FLAGS.workers), client_devices=tuple(FLAGS.client_devices),
      server_device=FLAGS.server_device)


def define_train_flags():
  """Defines one flag per `TrainConfig` field, with its default and help
  (the field's declaration, `config_lib._setting`)."""
  for field in dataclasses.fields(config_lib.TrainConfig):
    default = field.default
    help_text = field.metadata['help']
    if field.name == 'experiment_name':
      flags.DEFINE_string(field.name, None, help_text, required=True)
    elif field.type in ('bool', bool):
      flags.DEFINE_bool(field.name, default, help_text)
    elif field.type in ('int', int):
      flags.DEFINE_integer(field.name, default, help_text)
    elif field.type in ('float', float) or 'float' in str(field.type):
      flags.DEFINE_float(field.name, default, help_text)
    else:
      flags.DEFINE_string(field.name, default, help_text)


def config_from_flags(**overrides) -> config_lib.TrainConfig:
  """The flags' `TrainConfig` (relative paths resolve in `TrainConfig`)."""
  values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(config_lib.TrainConfig)}
  values.update(overrides)
  return config_lib.TrainConfig(**values)


# Errors of the user's making (flags, missing files, unusable saved state, a
# full or read-only disk: OSError names the path): one clear line instead of a
# traceback. Anything else is a bug and keeps its trace.
USER_ERRORS = (ValueError, OSError,
               training_loop.CheckpointError, training_loop.NonFiniteError,
               training_loop.StorageError,
               client_state.ClientStateError, run_lock.LockedError)


_ARGUMENT = re.compile(r'`([a-z][a-z0-9_]*)(=[^`]*)?`')


def as_flags(message: str) -> str:
  """A library message with its arguments named as this binary's flags.

  The library names arguments in backquotes (`trim_fraction`,
  `groups=kmeans:K`); where a flag of that name is defined, the user sees the
  flag (--trim_fraction, --groups=kmeans:K). Other backquoted text is kept.
  """
  def flag(match):
    return f'--{match.group(1)}{match.group(2) or ""}' if match.group(1) in FLAGS else match.group(0)

  return _ARGUMENT.sub(flag, message)


def exit_on_user_error(fn, *args, **kwargs):
  """Calls fn; on a user error prints `error: <message>` (arguments named as
  flags, `as_flags`) and exits with 2."""
  try:
    return fn(*args, **kwargs)
  except USER_ERRORS as e:
    print(f'error: {as_flags(str(e))}', file=sys.stderr)
    sys.exit(2)


def job_main(run_fn):
  """An absl `main` for jobs without positional arguments: quiet logs, then
  `run_fn()` with user errors reported in one line."""

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    quiet_logs()
    exit_on_user_error(run_fn)

  return main


def ensure_converted(dump_dirs, data_dir: str, min_examples: int) -> None:
  """Converts the Stack Exchange dumps into `data_dir`, or reuses the
  conversion there if it was made from the same dumps and settings (else a
  one-line error naming both; `convert_lib.ensure_converted`)."""
  convert_lib.ensure_converted([paths.resolve_path(d) for d in dump_dirs], data_dir,
                               min_examples=min_examples)


def quiet_logs():
  """INFO logs (TFF's per-checkpoint lines) would break the progress bar; --verbosity overrides."""
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


@contextlib.contextmanager
def tff_runtime(executor: Optional[runtime.ExecutorConfig] = None):
  """Runs the body with the executor of the flags (or `executor`) installed,
  and shuts TFF's local worker down after.

  Also on errors, Ctrl-C and SIGTERM (turned into KeyboardInterrupt here), so
  no worker process is left behind. A bad executor setting or an unreachable
  worker exits with a one-line error.
  """
  def on_sigterm(signum, frame):
    del signum, frame
    raise KeyboardInterrupt('SIGTERM')

  previous = signal.signal(signal.SIGTERM, on_sigterm)
  # A job started in the background by a script inherits SIGINT ignored; TFF's
  # worker would inherit that too, and TFF stops it with SIGINT and waits, so
  # every runtime restart or shutdown would hang. Restore the default first.
  if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    exit_on_user_error(lambda: runtime.set_executor(executor or executor_config_from_flags()))
    yield
  finally:
    runtime.shutdown_tff_runtime()
    signal.signal(signal.SIGTERM, previous)
