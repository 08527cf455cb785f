"""`--executor=remote`: one round's clients split across several TFF worker services.

Each worker is TFF's C++ executor service (`worker_binary`, the process TFF's
local runtime also starts; `bazel run //runners:worker -- --port=...`). The
driver keeps one TFF `RemoteExecutor` per worker over gRPC and runs every
computation through TFF's mergeable-computation machinery
(`mergeable_comp_compiler.compile_to_mergeable_comp_form`): the CLIENTS-placed
arguments are cut into one contiguous slice per worker, each worker runs the
computation up to its aggregation on its slice, the partial aggregates are
merged on the driver, and each worker finishes (`after_merge`) its slice.

One change from TFF's `MergeableCompExecutionContext`: TFF 0.87 concatenates
the workers' CLIENTS-placed results in the order the workers *finish*, so a
personal model could come back to the wrong client. Here results are put
back in slice order and partial aggregates are merged in slice order (so a
run is also deterministic). `tests/executors_test.py` checks both.

A computation whose CLIENTS-placed result depends on client work before its
aggregation (FedAlt's new v_i) is re-run after the merge by the mergeable form;
`PersonalizedProcess` therefore exposes `client_step` and `server_step`, which
the training loop calls separately under this executor (see `runtime`).
"""

import asyncio
import concurrent.futures
from typing import Sequence

import grpc

from partial_personalization.execution.tff_compat import (
    structure,
    compiler,
    mergeable_comp_compiler,
    tensorflow_computation,
    computation_base,
    async_execution_context,
    mergeable_comp_execution_context as mcec,
    python_executor_stacks,
    remote_executor,
    remote_executor_grpc_stub,
    computation_types,
    placements,
    type_analysis,
    type_conversions,
)

# As TFF's local runtime: model weights travel in single messages.
_GRPC_OPTIONS = [('grpc.max_message_length', 2 * 1000 * 1000 * 1000),
                 ('grpc.max_receive_message_length', 2 * 1000 * 1000 * 1000),
                 ('grpc.max_send_message_length', 2 * 1000 * 1000 * 1000)]


class WorkerUnavailableError(ConnectionError):
  """A worker given in --workers does not answer."""


def parse_workers(workers) -> list[str]:
  """'host:port,host:port' (or a list) -> ['host:port', ...].

  Raises:
    ValueError: empty list, or an entry without a numeric port.
  """
  if isinstance(workers, str):
    workers = [w for w in workers.split(',') if w.strip()]
  workers = [w.strip() for w in workers]
  if not workers:
    raise ValueError('`executor=remote` needs `workers=host:port[,host:port...]`')
  for worker in workers:
    host, _, port = worker.rpartition(':')
    if not host or not port.isdigit():
      raise ValueError(f'`workers` entry {worker!r} is not host:port')
  return workers


def _worker_context(target: str, timeout_seconds: float):
  channel = grpc.insecure_channel(target, _GRPC_OPTIONS)
  try:
    grpc.channel_ready_future(channel).result(timeout=timeout_seconds)
  except grpc.FutureTimeoutError as e:
    channel.close()
    port = target.rpartition(':')[2]
    raise WorkerUnavailableError(
        f'no TFF worker answers at {target} within {timeout_seconds:.0f} s. Start one on that '
        f'machine with `bazel run //runners:worker -- --port={port}` (see docs/executors.md), '
        'or fix `workers`.') from e
  stub = remote_executor_grpc_stub.RemoteExecutorGrpcStub(channel)

  def stack_fn(cardinalities):
    # Computations without CLIENTS arguments still declare the placement.
    cardinalities.setdefault(placements.CLIENTS, 0)
    executor = remote_executor.RemoteExecutor(stub)
    executor.set_cardinalities(cardinalities)
    return executor

  return async_execution_context.AsyncExecutionContext(
      executor_fn=python_executor_stacks.ResourceManagingExecutorFactory(stack_fn),
      compiler_fn=compiler.desugar_and_transform_to_native,
      transform_args=tensorflow_computation.transform_args,
      transform_result=tensorflow_computation.transform_result)


def _on_threads(pool: concurrent.futures.ThreadPoolExecutor, calls):
  """Runs each `call()` (a coroutine function) on its own thread and event loop.

  TFF 0.87's `RemoteExecutor` calls its gRPC stub synchronously inside its
  coroutines, which blocks the event loop: under one `asyncio.gather` the
  workers computed one after another (measured: 2 workers, each on its own
  core, ran a round no faster than 1; docs/scale.md). On threads their calls
  overlap (gRPC's synchronous stubs are thread-safe).
  """
  loop = asyncio.get_running_loop()
  return asyncio.gather(*[loop.run_in_executor(pool, asyncio.run, call()) for call in calls])


async def _invoke_in_slice_order(form: mcec.MergeableCompForm, arg, contexts, pool):
  """TFF's mergeable invocation, with results and merges in slice order."""
  args = arg.value() if arg is not None else [None] * len(contexts)
  partials = await _on_threads(pool, [
      lambda a=a, c=context: c.invoke(form.up_to_merge, a) for a, context in zip(args, contexts)])
  merged = partials[0]
  for partial in partials[1:]:
    merged = await contexts[0].invoke(form.merge, structure.Struct.unnamed(merged, partial))

  def after(a, context):
    return context.invoke(form.after_merge, merged if a is None else
                          structure.Struct.unnamed(a, merged))

  result_type = form.after_merge.type_signature.result
  if type_analysis.contains_only(
      result_type, lambda t: not isinstance(t, computation_types.FederatedType) or t.all_equal):
    return await after(args[0], contexts[0])  # The same on every slice.
  results = await _on_threads(pool, [lambda a=a, c=c: after(a, c) for a, c in zip(args, contexts)])
  return mcec._repackage_partitioned_values(  # pylint: disable=protected-access
      list(results), result_type_spec=result_type)


class RemoteContext(mcec.MergeableCompExecutionContext):
  """TFF's mergeable context over remote workers, CLIENTS results in order."""

  def __init__(self, workers: Sequence[str], timeout_seconds: float = 10.0):
    self.workers = parse_workers(workers)
    contexts = [_worker_context(w, timeout_seconds) for w in self.workers]
    self._pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=len(contexts), thread_name_prefix='tff_remote_worker')
    super().__init__(async_contexts=contexts,
                     compiler_fn=mergeable_comp_compiler.compile_to_mergeable_comp_form,
                     num_subrounds=len(contexts))

  def invoke(self, comp, arg=None):
    if not isinstance(comp, computation_base.Computation):
      raise TypeError(f'expected a TFF computation, got {type(comp)}')
    form = self._compiler_pipeline.compile(comp)
    if arg is not None:
      arg = mcec.MergeableCompExecutionContextValue(
          arg, form.up_to_merge.type_signature.parameter, self._num_subrounds)
    result = self._async_runner.run_coro_and_return_result(
        _invoke_in_slice_order(form, arg, self._async_execution_contexts, self._pool))
    # The original signature keeps the Python containers (e.g. ModelWeights).
    return type_conversions.type_to_py_container(result, comp.type_signature.result)

