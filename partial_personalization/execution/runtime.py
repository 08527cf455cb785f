"""Where TFF computations run (`--executor`), and a clean TFF runtime shutdown.

Three executors run the same computations (see docs/executors.md):
  local        TFF's C++ runtime in a worker process it starts (the default).
  remote       TFF worker services on other processes or machines, a round's
               clients split across them (`remote_context`).
  accelerated  the in-process TensorFlow runtime on GPUs, or logical CPUs,
               clients spread across devices (`accelerated_context`).

Shutdown: `import tensorflow_federated` installs a C++ execution context whose
`worker_binary` process is stopped only from a `__del__`. That fails at
interpreter exit (modules are gone), and after Ctrl-C inside a computation the
traceback keeps the context alive, so the worker outlives Python, re-parented
and holding stdout (`python run.py | tail` hangs). `shutdown_tff_runtime`
therefore stops the worker of the installed context itself.
"""

import atexit
import contextlib
import dataclasses
import gc
import os
import signal
import subprocess
import threading
from typing import Optional

import tensorflow_federated as tff

from partial_personalization.execution import worker_config
# runtime_error_context: no public class raises on use; it is the context TFF
# itself installs when no runtime is available.
from partial_personalization.execution.tff_compat import context_stack_impl, runtime_error_context

EXECUTORS = ('local', 'remote', 'accelerated')


@dataclasses.dataclass(frozen=True)
class ExecutorConfig:
  """Settings of `--executor` and its flags.

  Attributes:
    executor: One of `EXECUTORS`.
    max_concurrent_computation_calls: local: concurrent calls of one
      computation in the C++ runtime (clients trained at once); 0: the
      default, `worker_config.default_concurrent_calls()`; < 0: no limit.
    workers: remote: 'host:port' of each TFF worker service.
    client_devices: accelerated: TensorFlow devices of client work, e.g.
      ('GPU:0', 'GPU:1'); default all GPUs, else all logical CPUs.
    server_device: accelerated: device of the server update.
  """

  executor: str = 'local'
  max_concurrent_computation_calls: int = 0
  workers: tuple[str, ...] = ()
  client_devices: tuple[str, ...] = ()
  server_device: Optional[str] = None

  def __post_init__(self):
    if self.executor not in EXECUTORS:
      raise ValueError(f'`executor` must be one of {EXECUTORS}, got {self.executor!r}')
    if self.workers and self.executor != 'remote':
      raise ValueError('`workers` is for `executor=remote`')
    if (self.client_devices or self.server_device) and self.executor != 'accelerated':
      raise ValueError('`client_devices` and `server_device` are for `executor=accelerated`')
    if self.max_concurrent_computation_calls != 0 and self.executor != 'local':
      raise ValueError('`max_concurrent_computation_calls` is for `executor=local`')


_active = ExecutorConfig()


def set_executor(config: ExecutorConfig):
  """Installs the executor as TFF's default context; returns the context.

  Raises:
    ValueError: bad settings or an unknown device.
    remote_context.WorkerUnavailableError: a worker does not answer.
  """
  global _active
  if config.executor == 'local':
    calls = config.max_concurrent_computation_calls or worker_config.default_concurrent_calls()
    context = tff.backends.native.create_sync_local_cpp_execution_context(
        max_concurrent_computation_calls=calls)
    _start_local_worker(context, calls)
  elif config.executor == 'remote':
    from partial_personalization.execution import remote_context  # pylint: disable=g-import-not-at-top
    context = remote_context.RemoteContext(config.workers)
  else:
    from partial_personalization.execution import accelerated_context  # pylint: disable=g-import-not-at-top
    context = accelerated_context.AcceleratedContext(
        config.client_devices or None, config.server_device)
  _replace_context(context)
  _active = config
  return context


def active_executor() -> ExecutorConfig:
  """The settings last installed by `set_executor` (default: local)."""
  return _active


def splits_rounds() -> bool:
  """Whether rounds run as client_step + server_step (see `remote_context`)."""
  return _active.executor == 'remote'


def _service_managers(context) -> list:
  """The worker managers of a TFF local C++ context (TFF 0.87 layout: the
  executor factory's stack function closes over a ServiceManager whose
  `_process` is the worker's `subprocess.Popen`)."""
  factory = getattr(context, 'executor_factory', None)
  stack_fn = getattr(factory, '_executor_stack_fn', None)
  managers = []
  for cell in getattr(stack_fn, '__closure__', None) or ():
    try:
      contents = cell.cell_contents
    except ValueError:  # An empty cell.
      continue
    if hasattr(contents, '_process') and hasattr(contents, 'get_stub'):
      managers.append(contents)
  return managers


@contextlib.contextmanager
def _environment(values: dict[str, str]):
  saved = {k: os.environ.get(k) for k in values}
  os.environ.update(values)
  try:
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


@contextlib.contextmanager
def _sigint_default():
  """SIGINT's default action in children started inside. A program started
  in the background by a script has SIGINT ignored, and its children inherit
  that; TFF stops a context's worker with SIGINT and waits without a timeout
  (when the context is dropped, e.g. by `tff.framework.set_default_context`),
  so such a worker would hang its driver."""
  restore = (threading.current_thread() is threading.main_thread() and
             signal.getsignal(signal.SIGINT) == signal.SIG_IGN)
  if restore:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
  try:
    yield
  finally:
    if restore:
      signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start_local_worker(context, concurrent_calls: int) -> None:
  """Starts the context's worker now, with `worker_environment` and SIGINT's
  default action, instead of at the first computation; the driver's own
  TensorFlow keeps its settings. A worker TFF restarts later (after a crash)
  gets TensorFlow's defaults."""
  with _environment(worker_config.worker_environment(concurrent_calls)), _sigint_default():
    for manager in _service_managers(context):
      manager.get_stub()
      worker = manager._process  # pylint: disable=protected-access
      if isinstance(worker, subprocess.Popen):
        _watch_parent(worker.pid)


def _watch_parent(worker_pid: int) -> None:
  """Kills the worker within about a second of this process's death, even by
  SIGKILL (e.g. the OOM killer), when no Python code runs to stop it. A shell
  polls both processes (no `preexec_fn`: forking a multithreaded process to
  run Python can crash) and ends by itself when the worker is stopped."""
  script = (f'while kill -0 {os.getpid()} 2>/dev/null && kill -0 {worker_pid} 2>/dev/null; '
            f'do sleep 1; done; kill -0 {os.getpid()} 2>/dev/null || '
            f'kill -KILL {worker_pid} 2>/dev/null')
  subprocess.Popen(['/bin/sh', '-c', script], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stopped(*args, **kwargs):
  raise RuntimeError('this TFF runtime was shut down')


def shutdown_tff_runtime() -> None:
  """Stops TFF's local worker (and forgets the active executor). Later
  computations need a new context, e.g. `set_executor(ExecutorConfig())`."""
  global _active
  _replace_context(runtime_error_context.RuntimeErrorContext())
  _active = ExecutorConfig()
  gc.collect()


# Also when a program exits without calling it (e.g. on a flags error): TFF's
# ServiceManager.__del__ would otherwise run at interpreter teardown, after
# `subprocess` is gone, and print an AttributeError traceback.
atexit.register(shutdown_tff_runtime)


def _replace_context(context) -> None:
  """Installs `context` as TFF's default and stops the old one's local worker."""
  managers = _service_managers(context_stack_impl.context_stack.current)
  tff.framework.set_default_context(context)
  for manager in managers:
    # A computation still running in TFF's background thread would restart a
    # stopped worker (TFF retries on UNAVAILABLE); forbid that first.
    manager.get_stub = _stopped
    worker = manager._process  # pylint: disable=protected-access
    if isinstance(worker, subprocess.Popen) and worker.poll() is None:
      # SIGTERM, not TFF's SIGINT: a process started in the background by a
      # script ignores SIGINT, and so would the worker it spawns.
      worker.terminate()
      try:
        worker.wait(timeout=10)
      except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()
    manager._process = None  # pylint: disable=protected-access  # Its __del__ must not signal a reused pid.
