"""TFF runtime lifecycle: shut the local worker down before the interpreter exits.

`import tensorflow_federated` installs a C++ execution context whose
`worker_binary` process is stopped from a `__del__` that fails at interpreter
exit (modules are gone), leaving the worker re-parented and holding stdout, so
`python run.py | tail` hangs. Replacing the default context while modules are
alive lets the old context stop its worker.
"""

import gc

import tensorflow as tf
import tensorflow_federated as tff
# No public class raises on use; this is the context TFF itself installs when
# no runtime is available.
from tensorflow_federated.python.core.impl.context_stack import runtime_error_context


def shutdown_tff_runtime() -> None:
  """Stops TFF's local worker. Later computations need a new context, e.g.
  `tff.backends.native.set_sync_local_cpp_execution_context()`."""
  tff.framework.set_default_context(runtime_error_context.RuntimeErrorContext())
  gc.collect()


def restart_tff_runtime() -> None:
  """A fresh local runtime: stops the worker (and the memory its cached
  computations hold), drops Keras' global graph state, starts a new worker.

  Long jobs that build many processes in one interpreter (the experiment
  grid) call it between runs; without it the worker and the interpreter grow
  by gigabytes per run.
  """
  shutdown_tff_runtime()
  tf.keras.backend.clear_session()
  gc.collect()
  tff.backends.native.set_sync_local_cpp_execution_context()
