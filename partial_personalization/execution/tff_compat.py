"""The one door to TensorFlow Federated's private modules.

Everything else imports TFF's public API (`tensorflow_federated as tff`); the
few internals the executors need (TFF has no public API for them) come from
here, so a TFF upgrade touches this file and its users only:

* `runtime`: the context stack and the runtime-error context TFF installs when
  no runtime is available.
* `remote_context`: TFF's mergeable-computation compiler and execution context,
  remote executor stubs, type utilities.
* `accelerated_context`: the compiler passes that reduce a computation to
  TensorFlow blocks, and the helpers that call them.
* `tasks/gldv2/data`: TFF's loader of per-user TFRecord files.

The project is written against TFF 0.87 (`requirements.lock`); the model
interface it builds on is `tff.learning.models.ReconstructionModel` (see
`partition.build_reconstruction_model`). Importing this module with another
TFF version fails with an error that says which version to install.
"""

import tensorflow_federated as tff

SUPPORTED_VERSION = '0.87'

if not tff.__version__.startswith(SUPPORTED_VERSION + '.'):
  raise ImportError(
      f'this project is written against TensorFlow Federated {SUPPORTED_VERSION} (it uses '
      f'TFF internals that move between versions); found {tff.__version__}. Install the '
      'pinned environment: bash tools/bootstrap.sh (requirements.lock).')

# pylint: disable=g-bad-import-order,unused-import
from tensorflow_federated.python.common_libs import structure
from tensorflow_federated.python.core.backends.native import compiler
from tensorflow_federated.python.core.backends.native import mergeable_comp_compiler
from tensorflow_federated.python.core.environments.tensorflow_backend import tensorflow_tree_transformations
from tensorflow_federated.python.core.environments.tensorflow_frontend import tensorflow_computation
from tensorflow_federated.python.core.impl.compiler import building_blocks
from tensorflow_federated.python.core.impl.compiler import transformations
from tensorflow_federated.python.core.impl.computation import computation_base
from tensorflow_federated.python.core.impl.computation import computation_impl
from tensorflow_federated.python.core.impl.context_stack import context_base
from tensorflow_federated.python.core.impl.context_stack import context_stack_impl
from tensorflow_federated.python.core.impl.context_stack import runtime_error_context
from tensorflow_federated.python.core.impl.execution_contexts import async_execution_context
from tensorflow_federated.python.core.impl.execution_contexts import mergeable_comp_execution_context
from tensorflow_federated.python.core.impl.executor_stacks import python_executor_stacks
from tensorflow_federated.python.core.impl.executors import remote_executor
from tensorflow_federated.python.core.impl.executors import remote_executor_grpc_stub
from tensorflow_federated.python.core.impl.types import computation_types
from tensorflow_federated.python.core.impl.types import placements
from tensorflow_federated.python.core.impl.types import type_analysis
from tensorflow_federated.python.core.impl.types import type_conversions
from tensorflow_federated.python.core.impl.utils import tensorflow_utils
from tensorflow_federated.python.simulation.datasets import vision_datasets_utils
