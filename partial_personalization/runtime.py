"""TFF runtime lifecycle: shut the local worker down before the interpreter exits.

`import tensorflow_federated` installs a C++ execution context whose
`worker_binary` process is stopped from a `__del__` that fails at interpreter
exit (modules are gone), leaving the worker re-parented and holding stdout, so
`python run.py | tail` hangs. Replacing the default context while modules are
alive lets the old context stop its worker.
"""

import gc

import tensorflow_federated as tff
# No public class raises on use; this is the context TFF itself installs when
# no runtime is available.
from tensorflow_federated.python.core.impl.context_stack import runtime_error_context


def shutdown_tff_runtime() -> None:
  """Stops TFF's local worker. Later computations need a new context, e.g.
  `tff.backends.native.set_sync_local_cpp_execution_context()`."""
  tff.framework.set_default_context(runtime_error_context.RuntimeErrorContext())
  gc.collect()

