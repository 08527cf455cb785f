"""`--executor=accelerated`: TFF computations on the in-process TensorFlow runtime.

TFF 0.87's C++ worker is built without CUDA and the Python executor stack that
placed clients on GPUs (`client_tf_devices`) is gone, so this context runs the
same computations another way:

* The federated computation is compiled by TFF's own passes: intrinsics such
  as `federated_mean` are replaced by their TensorFlow bodies
  (`replace_intrinsics_with_bodies`, as the native runtime does), then brought
  to call-dominant form. All arithmetic, including aggregation, is therefore
  done by TFF-generated TensorFlow computations.
* Each TensorFlow computation (client work, server update, accumulate, ...) is
  imported into a TF function with TFF's `deserialize_and_call_tf_computation`
  and called eagerly on a device: client `i` of a `federated_map` runs on
  `client_devices[i % len(client_devices)]` (one thread per device, clients of a
  device in order), everything SERVER-placed on `server_device`. Datasets stay
  on the CPU (TF has no dataset kernels on GPUs).
* The remaining federated steps are interpreted here, in Python, with TFF's
  semantics: broadcast (the same value to every client), map, apply, zip,
  value/eval, and `federated_aggregate` (zero, then accumulate each device's
  clients in client order on that device, merge the per-device accumulators in
  device order, report on the server). CLIENTS-placed results come back as a
  list in client order, so personal state is written back to the right client.

Values: SERVER-placed values are the member value itself; CLIENTS-placed values
are Python lists, one entry per client; structures are `tff.structure.Struct`.
Results are converted to numpy and TFF's Python containers, as the native
context does.
"""

import collections
import concurrent.futures
import contextlib
import itertools
import threading
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf

from partial_personalization.execution.tff_compat import (
    structure,
    tensorflow_tree_transformations,
    building_blocks,
    transformations,
    computation_impl,
    context_base,
    computation_types,
    placements,
    type_conversions,
    tensorflow_utils,
)

_DATASET_DEVICE = '/device:CPU:0'
_function_index = itertools.count()


class UnsupportedComputationError(NotImplementedError):
  """The computation uses an intrinsic this context does not run."""


def default_devices() -> tuple[list[str], str]:
  """(client devices, server device): all GPUs, else every logical CPU; server
  on the first of them."""
  gpus = [d.name for d in tf.config.list_logical_devices('GPU')]
  devices = gpus or [d.name for d in tf.config.list_logical_devices('CPU')]
  return devices, devices[0]


def _flat_specs(type_spec) -> list[tf.TensorSpec]:
  """Leaves of a parameter type: tensors, and sequences as variant scalars."""
  if isinstance(type_spec, computation_types.StructType):
    return [s for _, t in structure.iter_elements(type_spec) for s in _flat_specs(t)]
  if isinstance(type_spec, computation_types.SequenceType):
    return [tf.TensorSpec([], tf.variant)]
  if isinstance(type_spec, computation_types.TensorType):
    return [tf.TensorSpec(type_spec.shape, type_spec.dtype)]
  raise UnsupportedComputationError(f'cannot pass a {type_spec} to TensorFlow')


def _unflatten(type_spec, leaves: list):
  """Rebuilds a parameter from graph placeholders (inverse of `_flatten`)."""
  if isinstance(type_spec, computation_types.StructType):
    return structure.Struct([(name, _unflatten(t, leaves))
                             for name, t in structure.iter_elements(type_spec)])
  leaf = leaves.pop(0)
  if isinstance(type_spec, computation_types.SequenceType):
    with tf.device(_DATASET_DEVICE):
      return tf.data.experimental.from_variant(
          leaf, structure=type_conversions.type_to_tf_structure(type_spec.element))
  return leaf


def _flatten(type_spec, value) -> list:
  if isinstance(type_spec, computation_types.StructType):
    value = structure.from_container(value)
    return [leaf for i, (_, t) in enumerate(structure.iter_elements(type_spec))
            for leaf in _flatten(t, value[i])]
  if isinstance(type_spec, computation_types.SequenceType):
    if not isinstance(value, tf.data.Dataset):
      raise TypeError(f'expected a tf.data.Dataset for {type_spec}, got {type(value)}')
    return [value._variant_tensor]  # pylint: disable=protected-access
  return [tf.convert_to_tensor(value, type_spec.dtype)]


class _TensorFlowFunction:
  """One TFF TensorFlow computation, imported once per device and called eagerly."""

  def __init__(self, comp: building_blocks.CompiledComputation, calls_by_device):
    self._proto = comp.proto
    self._type = comp.type_signature
    self._by_device = {}
    self._lock = threading.Lock()
    self._calls = calls_by_device
    self._index = next(_function_index)

  def _build(self, device: str):
    param_type, result_type = self._type.parameter, self._type.result
    specs = _flat_specs(param_type) if param_type is not None else []
    names = {}

    def body(*flat):
      graph = tf.compat.v1.get_default_graph()
      arg = _unflatten(param_type, list(flat)) if param_type is not None else None
      token = tf.constant('')  # Only used by computations that read it.
      with tf.device(device):
        # Variables are found by shared name: a suffix per computation and
        # device keeps those of two computations or devices apart.
        suffix = f'_{self._index}_' + device.replace(':', '_').replace('/', '_')
        init_op, result = tensorflow_utils.deserialize_and_call_tf_computation(
            self._proto, arg, graph, suffix, token)
      names['init'] = init_op
      return structure.flatten(result) if isinstance(
          result_type, computation_types.StructType) else [result]

    wrapped = tf.compat.v1.wrap_function(body, signature=specs)
    run = wrapped.prune(feeds=wrapped.inputs, fetches=wrapped.outputs)
    init = None
    if names['init']:
      init = wrapped.prune(feeds=wrapped.inputs, fetches=[names['init']])
    return init, run

  def __call__(self, arg, device: str):
    with self._lock:
      if device not in self._by_device:
        self._by_device[device] = self._build(device)
      init, run = self._by_device[device]
      self._calls[device] += 1
    param_type, result_type = self._type.parameter, self._type.result
    flat = _flatten(param_type, arg) if param_type is not None else []
    with tf.device(device):
      if init is not None:  # Variables created inside the computation.
        init(*flat[:len(init.inputs)])
      outputs = run(*flat)
    if isinstance(result_type, computation_types.StructType):
      return structure.pack_sequence_as(result_type, list(outputs))
    return outputs[0]


class _Interpreter:
  """Evaluates a call-dominant building block (see the module docstring)."""

  def __init__(self, client_devices: Sequence[str], server_device: str,
               num_clients: int, functions: dict, calls_by_device):
    self.client_devices = list(client_devices)
    self.server_device = server_device
    self.num_clients = num_clients
    self._functions = functions  # CompiledComputation proto id -> _TensorFlowFunction
    self._calls = calls_by_device
    self._local = threading.local()
    self._pool = concurrent.futures.ThreadPoolExecutor(len(self.client_devices))

  def close(self):
    self._pool.shutdown()

  @property
  def device(self) -> str:
    return getattr(self._local, 'device', None) or self.server_device

  @contextlib.contextmanager
  def on_device(self, device):
    previous = getattr(self._local, 'device', None)
    self._local.device = device
    try:
      yield
    finally:
      self._local.device = previous

  def evaluate(self, bb, env: dict):
    if isinstance(bb, building_blocks.Reference):
      return env[bb.name]
    if isinstance(bb, building_blocks.Selection):
      source = self.evaluate(bb.source, env)
      return source[bb.as_index()]
    if isinstance(bb, building_blocks.Struct):
      return structure.Struct([(name, self.evaluate(e, env))
                               for name, e in structure.iter_elements(bb)])
    if isinstance(bb, building_blocks.Call):
      fn = self.evaluate(bb.function, env)
      return fn() if bb.argument is None else fn(self.evaluate(bb.argument, env))
    if isinstance(bb, building_blocks.Lambda):
      if bb.parameter_name is None:
        return lambda: self.evaluate(bb.result, env)
      return lambda arg: self.evaluate(bb.result, {**env, bb.parameter_name: arg})
    if isinstance(bb, building_blocks.Block):
      scope = dict(env)
      for name, value in bb.locals:
        scope[name] = self.evaluate(value, scope)
      return self.evaluate(bb.result, scope)
    if isinstance(bb, building_blocks.CompiledComputation):
      key = id(bb.proto)
      if key not in self._functions:
        self._functions[key] = _TensorFlowFunction(bb, self._calls)
      function = self._functions[key]
      if bb.type_signature.parameter is None:
        return lambda: function(None, self.device)
      return lambda arg: function(arg, self.device)
    if isinstance(bb, building_blocks.Intrinsic):
      return self._intrinsic(bb)
    if isinstance(bb, building_blocks.Literal):
      return np.asarray(bb.value)
    raise UnsupportedComputationError(f'unsupported building block {type(bb).__name__}')

  def _intrinsic(self, bb):
    uri = bb.uri
    handler = getattr(self, '_' + uri, None)
    if handler is None:
      raise UnsupportedComputationError(
          f'the accelerated executor does not run {uri}; use `executor=local`')
    return handler

  def _map_clients(self, fn, values: list) -> list:
    """fn(value_i) for each client, on its device; results in client order."""
    by_device = collections.defaultdict(list)
    for i in range(len(values)):
      by_device[self.client_devices[i % len(self.client_devices)]].append(i)

    def run_device(device, indices):
      with self.on_device(device):
        return [(i, fn(values[i])) for i in indices]

    results = [None] * len(values)
    futures = [self._pool.submit(run_device, d, idx) for d, idx in by_device.items()]
    for future in futures:
      for i, value in future.result():
        results[i] = value
    return results

  # Intrinsics; the argument is a Struct of the intrinsic's parameters.
  def _federated_broadcast(self, value):
    return [value] * self.num_clients

  def _federated_map(self, arg):
    fn, values = arg[0], arg[1]
    return self._map_clients(fn, list(values))

  _federated_map_all_equal = _federated_map

  def _federated_apply(self, arg):
    with self.on_device(self.server_device):
      return arg[0](arg[1])

  def _federated_eval_at_server(self, fn):
    with self.on_device(self.server_device):
      return fn()

  def _federated_eval_at_clients(self, fn):
    return self._map_clients(lambda _: fn(), [None] * self.num_clients)

  def _federated_value_at_server(self, value):
    return value

  def _federated_value_at_clients(self, value):
    return [value] * self.num_clients

  def _federated_zip_at_server(self, value):
    return value

  def _federated_zip_at_clients(self, value):
    def pick(v, i):
      if isinstance(v, structure.Struct):
        return structure.Struct([(n, pick(e, i)) for n, e in structure.iter_elements(v)])
      return v[i]
    return [pick(value, i) for i in range(self.num_clients)]

  def _federated_aggregate(self, arg):
    values, zero, accumulate, merge, report = (arg[i] for i in range(5))
    by_device = collections.OrderedDict()
    for i, value in enumerate(values):
      by_device.setdefault(self.client_devices[i % len(self.client_devices)], []).append(value)

    def accumulate_on(device, device_values):
      with self.on_device(device):
        acc = zero
        for value in device_values:
          acc = accumulate(structure.Struct.unnamed(acc, value))
        return acc

    partials = [f.result() for f in [self._pool.submit(accumulate_on, d, v)
                                     for d, v in by_device.items()]]
    with self.on_device(self.server_device):
      total = partials[0] if partials else zero
      for partial in partials[1:]:
        total = merge(structure.Struct.unnamed(total, partial))
      return report(total)


def _count_clients(value, type_spec) -> Optional[int]:
  if isinstance(type_spec, computation_types.FederatedType):
    if type_spec.placement is placements.CLIENTS and not type_spec.all_equal:
      return len(value)
    return None
  if isinstance(type_spec, computation_types.StructType):
    value = structure.from_container(value)
    counts = {_count_clients(value[i], t) for i, (_, t) in
              enumerate(structure.iter_elements(type_spec))} - {None}
    if len(counts) > 1:
      raise ValueError(f'CLIENTS-placed arguments disagree on the number of clients: {counts}')
    return counts.pop() if counts else None
  return None


def _to_internal(value, type_spec):
  """Python argument -> interpreter value (lists at CLIENTS, Structs)."""
  if isinstance(type_spec, computation_types.FederatedType):
    if type_spec.placement is placements.CLIENTS and not type_spec.all_equal:
      return [_to_internal(v, type_spec.member) for v in value]
    return _to_internal(value, type_spec.member)
  if isinstance(type_spec, computation_types.StructType):
    value = structure.from_container(value)
    return structure.Struct([(name, _to_internal(value[i], t)) for i, (name, t) in
                             enumerate(structure.iter_elements(type_spec))])
  return value


def _to_numpy(value):
  if isinstance(value, structure.Struct):
    return structure.Struct([(n, _to_numpy(v)) for n, v in structure.iter_elements(value)])
  if isinstance(value, list):
    return [_to_numpy(v) for v in value]
  if isinstance(value, tf.Tensor):
    return value.numpy()
  return value


class AcceleratedContext(context_base.SyncContext):
  """A synchronous TFF context on the visible TensorFlow devices.

  Args:
    client_devices: TensorFlow device names for client work, e.g.
      ['/device:GPU:0', '/device:GPU:1']; clients are spread round-robin.
      Default: all GPUs, else all logical CPUs.
    server_device: Device of SERVER-placed work (server update, merge, report);
      default: the first client device.

  Raises (at construction):
    ValueError: a device that TensorFlow does not list.
  """

  def __init__(self, client_devices: Optional[Sequence[str]] = None,
               server_device: Optional[str] = None):
    known = {d.name for d in tf.config.list_logical_devices()}
    defaults, default_server = default_devices()
    self.client_devices = [_canonical(d) for d in (client_devices or defaults)]
    self.server_device = _canonical(server_device) if server_device else (
        self.client_devices[0] if client_devices else default_server)
    for device in self.client_devices + [self.server_device]:
      if device not in known:
        raise ValueError(f'device {device} is not visible to TensorFlow; visible: '
                         f'{sorted(known)}')
    self._compiled = {}  # id(computation) -> (computation, call-dominant building block)
    self._functions = {}
    # TensorFlow computation calls per device, for benchmarks and tests.
    self.calls_by_device = collections.Counter()

  def _compile(self, comp):
    key = id(comp)
    if key not in self._compiled:
      bb = comp.to_building_block()
      bb, _ = tensorflow_tree_transformations.replace_intrinsics_with_bodies(bb)
      bb = transformations.to_call_dominant(bb)
      self._compiled[key] = (comp, bb)  # Holds comp so its id is not reused.
    return self._compiled[key][1]

  def invoke(self, comp, arg):
    if not isinstance(comp, computation_impl.ConcreteComputation):
      raise TypeError(f'expected a TFF computation, got {type(comp)}')
    bb = self._compile(comp)
    param_type = comp.type_signature.parameter
    num_clients = 0
    if param_type is not None:
      num_clients = _count_clients(arg, param_type) or 0
      arg = _to_internal(arg, param_type)
    interpreter = _Interpreter(self.client_devices, self.server_device, num_clients,
                               self._functions, self.calls_by_device)
    try:
      fn = interpreter.evaluate(bb, {})
      result = fn() if param_type is None else fn(arg)
    finally:
      interpreter.close()
    return type_conversions.type_to_py_container(
        _to_numpy(result), comp.type_signature.result)


def _canonical(device: str) -> str:
  """'GPU:1', '/gpu:1' or '/device:GPU:1' -> the name TensorFlow lists."""
  spec = tf.DeviceSpec.from_string(device if device.startswith('/') else '/' + device)
  return f'/device:{spec.device_type.upper()}:{spec.device_index or 0}'

