"""Library behind `benchmarks/benchmark.py`: training and evaluation throughput
against a plain-TensorFlow floor, and peak memory.

Every case runs in a fresh process, so its peak memory and thread settings are
its own. A case is (executor, algorithm, model size, clients per round): FedAvg
(TFF's `build_weighted_fed_avg`) or FedAlt (`last_block` personal, one local
epoch on v then one on u, as `//runners:train` defaults) on the StackOverflow
task built from the real Stack Exchange data; every case samples the same
clients with the same shuffles. The first `warmup_rounds` (tracing, graph
compilation) are not timed.

The floor is the same local training without TFF, over the same integer
batches, materialized in memory before timing: one Keras model, a
`tf.function` traced once that runs a client's SGD steps (FedAlt: the v pass,
then the u pass) by indexing a stacked batch tensor, and the example-weighted
mean of the shared updates in numpy. Two variants, each the fastest we could
write for its threading:
  plain_tf           clients one after another; TensorFlow's default
                     intra-op threads parallelize each step across cores;
  plain_tf_parallel  one model copy and one Python thread per core, clients
                     dealt round-robin, one intra-op thread each.
The floor of a configuration is the faster of the two; "x floor" divides by it.

Throughput is client-sentences (clients x examples per client) per second of
wall time and per CPU-second of driver plus TFF worker. Evaluation cases time
one federated evaluation call over `eval_clients` clients' test splits (the
report's unit of work) against plain TF's forward passes over the same
batches.

Peak memory: the driver's peak resident set (`ru_maxrss`), and the sum over
TFF worker processes of theirs (`VmHWM`).
"""

import dataclasses
import multiprocessing
import os
import queue as queue_lib
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from partial_personalization.execution import worker_config

PLAIN_TF = 'plain_tf'
PLAIN_TF_PARALLEL = 'plain_tf_parallel'
FLOORS = (PLAIN_TF, PLAIN_TF_PARALLEL)
# TFF's local runtime one client at a time (--max_concurrent_computation_calls=1).
LOCAL_SERIAL = 'local_serial'
CASE_EXECUTORS = ('local', LOCAL_SERIAL, 'remote', 'accelerated') + FLOORS
ALGORITHMS = ('fedavg', 'fedalt', 'evaluation')


@dataclasses.dataclass(frozen=True)
class Case:
  executor: str  # one of CASE_EXECUTORS
  algorithm: str  # one of ALGORITHMS
  model_size: str
  clients_per_round: int


@dataclasses.dataclass(frozen=True)
class Settings:
  data_dir: str
  rounds: int = 2
  warmup_rounds: int = 1
  max_examples_per_client: int = 128
  client_batch_size: int = 16
  eval_clients: int = 64  # evaluation cases: clients per federated call
  seed: int = 0
  num_workers: int = 2  # remote: workers started on this machine per case
  pin_workers: bool = True  # remote: worker k runs on core k (mod the cores)
  logical_cpus: int = 2  # accelerated: CPU devices to spread clients over (no GPU)
  # False: TensorFlow's graph optimizer (Grappler) off, set before tracing, so
  # it holds in the floors and, through the traced function calls' config, in
  # TFF's worker too. Which is faster depends on the model and the algorithm.
  grappler: bool = True


def loopback_bytes() -> int:
  """Bytes received on the loopback interface so far (all processes): on one
  machine, the remote executor's traffic between driver and workers."""
  with open('/proc/net/dev') as f:
    for line in f:
      name, _, fields = line.partition(':')
      if name.strip() == 'lo':
        return int(fields.split()[0])
  return 0


def status_kb(field: str, pid='self') -> int:
  """A KiB field of a live process's /proc status (VmRSS: resident now,
  VmHWM: peak resident); 0 if the process is gone."""
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1])
  except OSError:
    pass
  return 0


def _peak_kb(pid: int) -> int:
  return status_kb('VmHWM', pid)


def process_cpu_seconds(pid: Optional[int] = None) -> float:
  """User + system CPU seconds of a process (this one by default), all threads."""
  if pid is None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
  try:
    with open(f'/proc/{pid}/stat') as f:
      fields = f.read().rsplit(')', 1)[1].split()
  except OSError:
    return 0.0
  return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _train_config(case: Case, settings: Settings, run_dir: str):
  from runners import config_lib  # pylint: disable=g-import-not-at-top
  # The evaluation case times FedAlt's model (a personal last block).
  algorithm = 'fedalt' if case.algorithm == 'evaluation' else case.algorithm
  return config_lib.TrainConfig(
      experiment_name=os.path.basename(run_dir), root_output_dir=os.path.dirname(run_dir),
      task='stackoverflow', cache_dir=settings.data_dir, algorithm=algorithm,
      personalization=None,  # The algorithm's: none for FedAvg, else the last block.
      model_size=case.model_size, clients_per_round=case.clients_per_round,
      client_batch_size=settings.client_batch_size,
      max_examples_per_client=settings.max_examples_per_client, seed=settings.seed,
      report=False, progress=False)


def _round_inputs(task, settings: Settings, case: Case, round_num: int):
  from partial_personalization.programs import training_loop  # pylint: disable=g-import-not-at-top
  ids = training_loop.sample_clients(sorted(task.train_data.client_ids),
                                     case.clients_per_round, settings.seed, round_num)
  datasets = [task.train_dataset(c, training_loop.dataset_seed(settings.seed, round_num, i))
              for i, c in enumerate(ids)]
  return ids, datasets


def _eval_inputs(task, settings: Settings):
  from runners import population_lib  # pylint: disable=g-import-not-at-top
  ids = sorted(set(task.train_data.client_ids) & set(task.test_data.client_ids))
  ids = ids[:settings.eval_clients]
  return ids, population_lib.eval_datasets(task, 'test', ids)


def _stacked(dataset):
  """A client's batches as (inputs, labels) numpy stacks [batches, batch, ...]
  plus the size of each batch (the last one may be short)."""
  batches = list(dataset.as_numpy_iterator())
  width = max(len(x) for x, _ in batches)
  pad = lambda a: np.pad(a, [(0, width - len(a))] + [(0, 0)] * (a.ndim - 1))
  return (np.stack([pad(x) for x, _ in batches]), np.stack([pad(y) for _, y in batches]),
          np.array([len(x) for x, _ in batches], np.int64))


class _PlainClient:
  """One Keras model and a client's local training in one traced tf.function."""

  def __init__(self, task, config):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.model = model = task.keras_model_fn()
    loss_fn = task.loss_fn()
    lr = config.client_learning_rate
    personal_ids = {id(v) for v in task.partition_fn(model)}
    self.personal = [v for v in model.trainable_variables if id(v) in personal_ids]
    self.shared = [v for v in model.trainable_variables if id(v) not in personal_ids]
    passes = [self.personal, self.shared] if self.personal else [self.shared]

    def sgd_pass(xs, ys, sizes, variables):
      for i in tf.range(tf.shape(sizes)[0]):
        x, y = xs[i][:sizes[i]], ys[i][:sizes[i]]
        with tf.GradientTape() as tape:
          loss = loss_fn(y, model(x, training=True))
        for v, g in zip(variables, tape.gradient(loss, variables)):
          v.assign_sub(lr * g)

    def train(xs, ys, sizes):
      for variables in passes:
        sgd_pass(xs, ys, sizes, variables)
      return tf.reduce_sum(sizes)

    metric = task.metrics_fn()[0]  # What the report needs: accuracy and loss.

    def evaluate(xs, ys, sizes):
      metric.reset_state()
      total = tf.constant(0.0)
      for i in tf.range(tf.shape(sizes)[0]):
        x, y = xs[i][:sizes[i]], ys[i][:sizes[i]]
        logits = model(x, training=False)
        metric.update_state(y, logits)
        total += loss_fn(y, logits)
      return total, metric.result()

    spec = [tf.TensorSpec([None, None, None], tf.int64)] * 2 + [tf.TensorSpec([None], tf.int64)]
    self.train = tf.function(train, input_signature=spec)
    self.evaluate = tf.function(evaluate, input_signature=spec)


def _plain_tf_rounds(task, config, settings: Settings, case: Case) -> list[float]:
  """(wall seconds, CPU seconds) of each timed round of the same local
  training (or evaluation) in plain TensorFlow."""
  threads = (os.cpu_count() or 1) if case.executor == PLAIN_TF_PARALLEL else 1
  clients = [_PlainClient(task, config) for _ in range(threads)]
  global_u = [v.numpy() for v in clients[0].shared]
  initial_v = [v.numpy() for v in clients[0].personal]
  store = {}
  times = []
  for round_num in range(1, settings.warmup_rounds + settings.rounds + 1):
    if case.algorithm == 'evaluation':
      ids, datasets = _eval_inputs(task, settings)
    else:
      ids, datasets = _round_inputs(task, settings, case, round_num)
    inputs = [_stacked(d) for d in datasets]  # In memory before timing.
    updates, weights = [None] * len(ids), [0.0] * len(ids)
    start, cpu = time.perf_counter(), process_cpu_seconds()

    def work(k):
      client = clients[k]
      for i in range(k, len(ids), threads):
        for v, value in zip(client.shared, global_u):
          v.assign(value)
        for v, value in zip(client.personal, store.get(ids[i], initial_v)):
          v.assign(value)
        if case.algorithm == 'evaluation':
          client.evaluate(*inputs[i])
          continue
        weights[i] = float(client.train(*inputs[i]))
        updates[i] = [u - v.numpy() for u, v in zip(global_u, client.shared)]
        store[ids[i]] = [v.numpy() for v in client.personal]

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
      w.start()
    for w in workers:
      w.join()
    if case.algorithm != 'evaluation':
      total = sum(weights)
      global_u = [u - sum(w * up[j] for w, up in zip(weights, updates)) / total
                  for j, u in enumerate(global_u)]
    times.append((time.perf_counter() - start, process_cpu_seconds() - cpu, 0))
  return times[settings.warmup_rounds:]


def _worker_pids() -> list[int]:
  from partial_personalization.execution import runtime  # pylint: disable=g-import-not-at-top
  from partial_personalization.execution.tff_compat import context_stack_impl
  return [m._process.pid for m in runtime._service_managers(context_stack_impl.context_stack.current)  # pylint: disable=protected-access
          if m._process is not None]  # pylint: disable=protected-access


def _tff_rounds(task, config, settings: Settings, case: Case, run_dir: str, worker_pids):
  """(wall, CPU) seconds of each timed round through the training loop's
  runner (or of one evaluation call), and the workers' peak memory (KiB)."""
  from partial_personalization.state import client_state  # pylint: disable=g-import-not-at-top
  from runners import builders_lib  # pylint: disable=g-import-not-at-top
  from runners import weights_lib  # pylint: disable=g-import-not-at-top
  named_init = weights_lib.initial_named_weights(task, config)
  _, initial_personal = task.partition.split(named_init)
  store = client_state.ClientStateStore(os.path.join(run_dir, 'client_state.sqlite'),
                                        initial_personal)
  runner = builders_lib.build_runner(config, task, named_init, store)
  state = runner.initialize()
  pids = list(worker_pids) + _worker_pids()

  def cpu():
    return process_cpu_seconds() + sum(process_cpu_seconds(p) for p in pids)

  times = []
  for round_num in range(1, settings.warmup_rounds + settings.rounds + 1):
    start, cpu_start, lo_start = time.perf_counter(), cpu(), loopback_bytes()
    if case.algorithm == 'evaluation':  # Dataset construction included, as in the report.
      ids, datasets = _eval_inputs(task, settings)
      u, v = runner.global_weights(state), store.read(ids, before_round=1)
      runner.process.evaluate(u, v, datasets)
    else:
      ids, datasets = _round_inputs(task, settings, case, round_num)
      state, _ = runner.run_round(state, round_num, ids, datasets)
    times.append((time.perf_counter() - start, cpu() - cpu_start,
                  loopback_bytes() - lo_start))
  store.close()
  return times[settings.warmup_rounds:], sum(_peak_kb(p) for p in _worker_pids())


def _measure_in_child(case: Case, settings: Settings, workers: Sequence[str], worker_pids,
                      queue) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not settings.grappler:
    tf.config.optimizer.set_experimental_options({'disable_meta_optimizer': True})
  if case.executor == PLAIN_TF_PARALLEL:
    tf.config.threading.set_intra_op_parallelism_threads(1)
  if case.executor == 'accelerated' and settings.logical_cpus > 1:
    if not tf.config.list_physical_devices('GPU'):
      tf.config.set_logical_device_configuration(
          tf.config.list_physical_devices('CPU')[0],
          [tf.config.LogicalDeviceConfiguration()] * settings.logical_cpus)
  from partial_personalization.execution import runtime  # pylint: disable=g-import-not-at-top
  from runners import config_lib  # pylint: disable=g-import-not-at-top
  try:
    with tempfile.TemporaryDirectory() as tmp:
      run_dir = os.path.join(tmp, 'bench')
      config = _train_config(case, settings, run_dir)
      task = config_lib.create_task(config)
      if case.executor in FLOORS:
        times, worker_kb = _plain_tf_rounds(task, config, settings, case), 0
      else:
        if case.executor == LOCAL_SERIAL:
          executor = runtime.ExecutorConfig('local', max_concurrent_computation_calls=1)
        else:
          executor = runtime.ExecutorConfig(case.executor, workers=tuple(workers))
        runtime.set_executor(executor)
        times, worker_kb = _tff_rounds(task, config, settings, case, run_dir, worker_pids)
    queue.put(dict(times=times, worker_kb=worker_kb,
                   driver_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
  finally:
    runtime.shutdown_tff_runtime()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start_workers(n: int, pin: bool = False) -> list[subprocess.Popen]:
  """`n` TFF workers on free ports, with the settings `//runners:worker`
  gives them (concurrent clients, TensorFlow thread pools) for the cores each
  runs on; with `pin`, worker k runs on core k (mod the cores) only, as if
  each had a machine of one core (through `taskset`, which execs the worker:
  setting the affinity after the start would miss its first threads).

  Raises:
    FileNotFoundError: `pin` without `taskset` (util-linux) on PATH.
  """
  from runners import worker  # pylint: disable=g-import-not-at-top
  if pin and not shutil.which('taskset'):
    raise FileNotFoundError('--pin_workers needs `taskset` (util-linux); install it or pass '
                            '--nopin_workers')
  cores = sorted(os.sched_getaffinity(0))
  procs = []
  for k in range(n):
    port = _free_port()
    own = 1 if pin else len(cores)
    calls = worker_config.default_concurrent_calls(own)
    env = {**os.environ, **worker_config.worker_environment(calls, own)}
    pinning = ['taskset', '-c', str(cores[k % len(cores)])] if pin else []
    procs.append(subprocess.Popen(
        pinning + [worker.worker_binary_path(), f'--port={port}',
                   f'--max_concurrent_computation_calls={calls}'],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    procs[-1].port = port
  return procs


def run_in_child(target, *args, what: str, expect_killed: bool = False):
  """`target(*args, queue)` in a fresh spawned process (its own TensorFlow
  and TFF runtime, so cases do not share caches or threads); returns what it
  put on the queue. With `expect_killed`, the child is meant to end by
  SIGKILL after putting its result (a crash test).

  Raises:
    RuntimeError: the process failed (its error is printed above), put
      nothing, or ended otherwise than expected.
  """
  ctx = multiprocessing.get_context('spawn')
  results = ctx.Queue()
  process = ctx.Process(target=target, args=(*args, results))
  process.start()
  result, got = None, False
  # Read before joining: a child does not exit while its queue holds a large
  # item nobody reads.
  while not got:
    try:
      result, got = results.get(timeout=1.0), True
    except queue_lib.Empty:
      if not process.is_alive():
        try:  # Put just before it ended.
          result, got = results.get(timeout=1.0), True
        except queue_lib.Empty:
          break
  process.join()
  killed = process.exitcode == -signal.SIGKILL
  if not got or killed != expect_killed or (not expect_killed and process.exitcode != 0):
    raise RuntimeError(f'{what} failed (exit code {process.exitcode})')
  return result


def measure(case: Case, settings: Settings) -> dict:
  """Runs one case in a fresh process; returns its row of the results table.

  Raises:
    RuntimeError: the case's process failed (its error is printed above).
  """
  remote = case.executor == 'remote'
  workers = _start_workers(settings.num_workers, settings.pin_workers) if remote else []
  try:
    result = run_in_child(_measure_in_child, case, settings,
                          [f'localhost:{w.port}' for w in workers], [w.pid for w in workers],
                          what=f'benchmark case {case}')
    worker_kb = result['worker_kb'] + sum(_peak_kb(w.pid) for w in workers)
  finally:
    for w in workers:
      w.send_signal(signal.SIGINT)
      w.wait()
  wall = float(np.mean([t[0] for t in result['times']]))
  cpu = float(np.mean([t[1] for t in result['times']]))
  traffic = float(np.mean([t[2] for t in result['times']]))
  per_client = (settings.max_examples_per_client if case.algorithm != 'evaluation' else None)
  row = dict(executor=case.executor, grappler=settings.grappler, algorithm=case.algorithm,
             model_size=case.model_size,
             clients_per_round=(case.clients_per_round if case.algorithm != 'evaluation'
                                else settings.eval_clients),
             rounds=len(result['times']), seconds_per_round=wall, cpu_seconds_per_round=cpu,
             driver_peak_mb=result['driver_kb'] / 1024, worker_peak_mb=worker_kb / 1024,
             num_workers=settings.num_workers if remote else 0,
             # Remote: driver <-> workers bytes per round (each worker's share
             # is this over num_workers); other executors: ~0.
             traffic_mb_per_round=traffic / 2**20)
  if per_client:
    sentences = row['clients_per_round'] * per_client
    row.update(sentences_per_second=sentences / wall, sentences_per_cpu_second=sentences / cpu)
  row['clients_per_second'] = row['clients_per_round'] / wall
  return row


def add_ratios(table: pd.DataFrame) -> pd.DataFrame:
  """Round time over the floor's (the fastest plain-TF variant, Grappler on or
  off) of the same configuration, and over `local`'s (Grappler on)."""
  table = table.copy()
  key = ['algorithm', 'model_size', 'clients_per_round']
  floor = table[table.executor.isin(FLOORS)].groupby(key).seconds_per_round.min()
  if 'grappler' not in table:
    table['grappler'] = True
  table['grappler'] = table.grappler.fillna(True).astype(bool)
  local = table[(table.executor == 'local') & table.grappler].set_index(key).seconds_per_round
  table['x_floor'] = [r.seconds_per_round / floor.get(tuple(getattr(r, k) for k in key), np.nan)
                      for r in table.itertuples()]
  table['x_local'] = [r.seconds_per_round / local.get(tuple(getattr(r, k) for k in key), np.nan)
                      for r in table.itertuples()]
  return table


def _executor(row) -> str:
  if row['executor'] != 'remote':
    return row['executor']
  n = row.get('num_workers')
  n = int(n) if n == n and n is not None else 2
  return f"remote ({n} worker{'s' if n > 1 else ''})"


def to_markdown(table: pd.DataFrame) -> str:
  lines = ['| algorithm | model | clients | executor | Grappler | s/round | CPU-s/round | sentences/s | '
           'sentences/CPU-s | clients/s | driver peak MB | worker peak MB | driver<->workers MB/round '
           '| x floor |', '|' + '---|' * 14]
  fmt = lambda v, f: '' if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, f)
  for r in table.to_dict('records'):
    lines.append(
        f"| {r['algorithm']} | {r['model_size']} | {r['clients_per_round']} | {_executor(r)} | "
        f"{'on' if r['grappler'] else 'off'} | "
        f"{r['seconds_per_round']:.2f} | {r['cpu_seconds_per_round']:.2f} | "
        f"{fmt(r.get('sentences_per_second'), '.0f')} | "
        f"{fmt(r.get('sentences_per_cpu_second'), '.0f')} | {r['clients_per_second']:.1f} | "
        f"{r['driver_peak_mb']:,.0f} | {r['worker_peak_mb']:,.0f} | "
        f"{fmt(r.get('traffic_mb_per_round') if r['executor'] == 'remote' else None, ',.1f')} | "
        f"{r['x_floor']:.2f} |")
  return '\n'.join(lines)


def _done(rows, case: Case, settings: Settings) -> bool:
  clients = case.clients_per_round if case.algorithm != 'evaluation' else settings.eval_clients
  grappler = lambda r: str(r.get('grappler', True)) not in ('False', '0', '0.0')  # old rows: on
  workers = lambda r: int(r.get('num_workers', 2) if r.get('num_workers') == r.get('num_workers')
                          else 2)  # Rows of before the column (NaN): 2 workers.
  return any(r['executor'] == case.executor and r['algorithm'] == case.algorithm and
             grappler(r) == settings.grappler and
             (case.executor != 'remote' or workers(r) == settings.num_workers) and
             r['model_size'] == case.model_size and r['clients_per_round'] == clients
             for r in rows)


def run(cases: Sequence[Case], settings: Settings, output_dir: Optional[str] = None,
        log=print) -> pd.DataFrame:
  """Measures every case (resuming from `output_dir/benchmark.csv`); returns the table."""
  path = output_dir and os.path.join(output_dir, 'benchmark.csv')
  done = pd.read_csv(path) if path and os.path.exists(path) else pd.DataFrame()
  rows = done.to_dict('records')
  for i, case in enumerate(cases, 1):
    if _done(rows, case, settings):
      continue
    log(f'[{i}/{len(cases)}] {case.algorithm}, {case.executor}, {case.model_size}, '
        f'{case.clients_per_round} clients')
    row = measure(case, settings)
    log(f"    {row['seconds_per_round']:.2f} s/round, {row['cpu_seconds_per_round']:.2f} CPU-s, "
        f"driver {row['driver_peak_mb']:,.0f} MB, workers {row['worker_peak_mb']:,.0f} MB")
    rows.append(row)
    if path:
      os.makedirs(output_dir, exist_ok=True)
      pd.DataFrame(rows).to_csv(path, index=False)
  table = add_ratios(pd.DataFrame(rows))
  order = {e: i for i, e in enumerate(CASE_EXECUTORS)}
  table = table.sort_values(
      ['algorithm', 'model_size', 'clients_per_round', 'executor', 'grappler'],
      ascending=[True, True, True, True, False],
      key=lambda c: c.map(order) if c.name == 'executor' else (
          c.map({a: i for i, a in enumerate(ALGORITHMS)}) if c.name == 'algorithm' else c))
  if output_dir:
    with open(os.path.join(output_dir, 'benchmark.md'), 'w') as f:
      f.write(to_markdown(table) + '\n')
  return table.reset_index(drop=True)
