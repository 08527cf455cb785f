"""Library behind `runners/benchmark.py`: round throughput and peak memory per executor.

Every case (executor, model size, clients per round) runs in a fresh process,
so its peak memory is its own: FedAlt rounds (`last_block` personal, one local
epoch on v then one on u, as `//runners:train` defaults) on the StackOverflow
task built from the real Stack Exchange data, the same sampled clients and
shuffles for every executor. The first `warmup_rounds` (tracing, graph
compilation) are not timed.

`plain_tf` is the same local training without TFF: one Keras model, a
`tf.function` running the personal pass then the shared pass per client (plain
SGD, the same learning rate and data), and an example-weighted mean of the
shared updates in numpy. The ratio of an executor's round time to it is TFF's
overhead.

Peak memory: the driver's peak resident set (`ru_maxrss`), and the sum over
TFF worker processes of theirs (`VmHWM`): the local runtime's worker, or the
remote workers (started fresh for each case).
"""

import dataclasses
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

import numpy as np
import pandas as pd

PLAIN_TF = 'plain_tf'
# TFF's local runtime one client at a time (--max_concurrent_computation_calls=1),
# the like-for-like comparison with the sequential plain TensorFlow loop.
LOCAL_SERIAL = 'local_serial'
CASE_EXECUTORS = ('local', LOCAL_SERIAL, 'remote', 'accelerated', PLAIN_TF)


@dataclasses.dataclass(frozen=True)
class Case:
  executor: str  # one of CASE_EXECUTORS
  model_size: str
  clients_per_round: int


@dataclasses.dataclass(frozen=True)
class Settings:
  data_dir: str
  rounds: int = 3
  warmup_rounds: int = 1
  max_examples_per_client: int = 64
  seed: int = 0
  num_workers: int = 2  # remote: workers started on this machine per case
  logical_cpus: int = 2  # accelerated: CPU devices to spread clients over (no GPU)


def _peak_kb(pid: int) -> int:
  """Peak resident set (VmHWM) of a live process, in KiB; 0 if gone."""
  try:
    with open(f'/proc/{pid}/status') as f:
      for line in f:
        if line.startswith('VmHWM:'):
          return int(line.split()[1])
  except OSError:
    pass
  return 0


def _train_config(case: Case, settings: Settings, run_dir: str):
  from runners import train_lib  # pylint: disable=g-import-not-at-top
  return train_lib.TrainConfig(
      experiment_name=os.path.basename(run_dir), root_output_dir=os.path.dirname(run_dir),
      task='stackoverflow', cache_dir=settings.data_dir, algorithm='fedalt',
      model_size=case.model_size, clients_per_round=case.clients_per_round,
      max_examples_per_client=settings.max_examples_per_client, seed=settings.seed,
      report=False, progress=False)


def _round_inputs(task, settings: Settings, case: Case, round_num: int):
  from partial_personalization import training_loop  # pylint: disable=g-import-not-at-top
  ids = training_loop.sample_clients(sorted(task.train_data.client_ids),
                                     case.clients_per_round, settings.seed, round_num)
  datasets = [task.train_dataset(c, training_loop.dataset_seed(settings.seed, round_num, i))
              for i, c in enumerate(ids)]
  return ids, datasets


def _plain_tf_rounds(task, config, settings: Settings, case: Case) -> list[float]:
  """Seconds of each round of the same local training in plain TensorFlow."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model = task.keras_model_fn()
  personal = list(task.partition_fn(model))
  personal_ids = {id(v) for v in personal}
  shared = [v for v in model.trainable_variables if id(v) not in personal_ids]
  loss_fn = task.loss_fn()
  lr = config.client_learning_rate

  def sgd_pass(dataset, variables):
    count = tf.constant(0, tf.int64)
    for x, y in dataset:
      with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
      for v, g in zip(variables, tape.gradient(loss, variables)):
        v.assign_sub(lr * g)
      count += tf.cast(tf.shape(y)[0], tf.int64)
    return count

  def local_training(dataset):
    sgd_pass(dataset, personal)  # tau_v = 1 epoch on v, u fixed
    return sgd_pass(dataset, shared)  # tau_u = 1 epoch on u, new v fixed

  # A signature, or tf.function would trace again for every client's dataset.
  element_spec = _round_inputs(task, settings, case, 1)[1][0].element_spec
  client_update = tf.function(local_training,
                              input_signature=[tf.data.DatasetSpec(element_spec)])

  global_u = [v.numpy() for v in shared]
  initial_v = [v.numpy() for v in personal]
  store = {}
  times = []
  for round_num in range(1, settings.warmup_rounds + settings.rounds + 1):
    ids, datasets = _round_inputs(task, settings, case, round_num)
    start = time.perf_counter()
    updates, weights = [], []
    for cid, dataset in zip(ids, datasets):
      for v, value in zip(shared, global_u):
        v.assign(value)
      for v, value in zip(personal, store.get(cid, initial_v)):
        v.assign(value)
      n = float(client_update(dataset))
      updates.append([u - v.numpy() for u, v in zip(global_u, shared)])
      weights.append(n)
      store[cid] = [v.numpy() for v in personal]
    total = sum(weights)
    global_u = [u - sum(w * up[i] for w, up in zip(weights, updates)) / total
                for i, u in enumerate(global_u)]
    times.append(time.perf_counter() - start)
  return times[settings.warmup_rounds:]


def _tff_rounds(task, config, settings: Settings, case: Case, run_dir: str):
  """Seconds of each timed round through the training loop's runner, and the
  local worker's peak memory (KiB)."""
  from partial_personalization import client_state, runtime  # pylint: disable=g-import-not-at-top
  from runners import train_lib  # pylint: disable=g-import-not-at-top
  named_init = train_lib.initial_named_weights(task, config)
  _, initial_personal = task.partition.split(named_init)
  store = client_state.ClientStateStore(os.path.join(run_dir, 'client_state.sqlite'),
                                        initial_personal)
  runner = train_lib.build_runner(config, task, named_init, store)
  state = runner.initialize()
  times = []
  for round_num in range(1, settings.warmup_rounds + settings.rounds + 1):
    ids, datasets = _round_inputs(task, settings, case, round_num)
    start = time.perf_counter()
    state, _ = runner.run_round(state, round_num, ids, datasets)
    times.append(time.perf_counter() - start)
  worker_kb = 0
  if case.executor in ('local', LOCAL_SERIAL):
    from tensorflow_federated.python.core.impl.context_stack import context_stack_impl  # pylint: disable=g-import-not-at-top
    for manager in runtime._service_managers(context_stack_impl.context_stack.current):  # pylint: disable=protected-access
      if manager._process is not None:  # pylint: disable=protected-access
        worker_kb += _peak_kb(manager._process.pid)  # pylint: disable=protected-access
  store.close()
  return times[settings.warmup_rounds:], worker_kb


def _measure_in_child(case: Case, settings: Settings, workers: Sequence[str], queue) -> None:
  if case.executor == 'accelerated' and settings.logical_cpus > 1:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not tf.config.list_physical_devices('GPU'):
      tf.config.set_logical_device_configuration(
          tf.config.list_physical_devices('CPU')[0],
          [tf.config.LogicalDeviceConfiguration()] * settings.logical_cpus)
  from partial_personalization import runtime  # pylint: disable=g-import-not-at-top
  from runners import train_lib  # pylint: disable=g-import-not-at-top
  try:
    with tempfile.TemporaryDirectory() as tmp:
      run_dir = os.path.join(tmp, 'bench')
      config = _train_config(case, settings, run_dir)
      task = train_lib.create_task(config)
      if case.executor == PLAIN_TF:
        times, worker_kb = _plain_tf_rounds(task, config, settings, case), 0
      else:
        if case.executor == LOCAL_SERIAL:
          executor = runtime.ExecutorConfig('local', max_concurrent_computation_calls=1)
        else:
          executor = runtime.ExecutorConfig(case.executor, workers=tuple(workers))
        runtime.set_executor(executor)
        times, worker_kb = _tff_rounds(task, config, settings, case, run_dir)
    queue.put(dict(times=times, worker_kb=worker_kb,
                   driver_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
  finally:
    runtime.shutdown_tff_runtime()


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start_workers(n: int) -> list[subprocess.Popen]:
  from runners import worker  # pylint: disable=g-import-not-at-top
  procs = []
  for _ in range(n):
    port = _free_port()
    procs.append(subprocess.Popen([worker.worker_binary_path(), f'--port={port}'],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    procs[-1].port = port
  return procs


def measure(case: Case, settings: Settings) -> dict:
  """Runs one case in a fresh process; returns its row of the results table.

  Raises:
    RuntimeError: the case's process failed (its error is printed above).
  """
  workers = _start_workers(settings.num_workers) if case.executor == 'remote' else []
  try:
    ctx = multiprocessing.get_context('spawn')
    queue = ctx.Queue()
    process = ctx.Process(target=_measure_in_child, args=(
        case, settings, [f'localhost:{w.port}' for w in workers], queue))
    process.start()
    process.join()
    if process.exitcode != 0 or queue.empty():
      raise RuntimeError(f'benchmark case {case} failed (exit code {process.exitcode})')
    result = queue.get()
    worker_kb = result['worker_kb'] + sum(_peak_kb(w.pid) for w in workers)
  finally:
    for w in workers:
      w.send_signal(signal.SIGINT)
      w.wait()
  seconds = float(np.mean(result['times']))
  return dict(executor=case.executor, model_size=case.model_size,
              clients_per_round=case.clients_per_round, rounds=len(result['times']),
              seconds_per_round=seconds, rounds_per_second=1.0 / seconds,
              driver_peak_mb=result['driver_kb'] / 1024, worker_peak_mb=worker_kb / 1024)


def add_ratios(table: pd.DataFrame) -> pd.DataFrame:
  """Round time relative to `local` and to `plain_tf` in the same configuration."""
  table = table.copy()
  key = ['model_size', 'clients_per_round']
  for reference in ('local', PLAIN_TF):
    ref = table[table.executor == reference].set_index(key).seconds_per_round
    table[f'vs_{reference}'] = [
        row.seconds_per_round / ref.get((row.model_size, row.clients_per_round), np.nan)
        for row in table.itertuples()]
  return table


def to_markdown(table: pd.DataFrame) -> str:
  lines = ['| model | clients/round | executor | s/round | rounds/s | driver peak MB | '
           'worker peak MB | × local | × plain TF |', '|---|---|---|---|---|---|---|---|---|']
  for r in table.itertuples():
    lines.append(
        f'| {r.model_size} | {r.clients_per_round} | {r.executor} | {r.seconds_per_round:.2f} | '
        f'{r.rounds_per_second:.3f} | {r.driver_peak_mb:,.0f} | {r.worker_peak_mb:,.0f} | '
        f'{r.vs_local:.2f} | {r.vs_plain_tf:.2f} |')
  return '\n'.join(lines)


def run(cases: Sequence[Case], settings: Settings, output_dir: Optional[str] = None,
        log=print) -> pd.DataFrame:
  """Measures every case (resuming from `output_dir/benchmark.csv`); returns the table."""
  path = output_dir and os.path.join(output_dir, 'benchmark.csv')
  done = pd.read_csv(path) if path and os.path.exists(path) else pd.DataFrame()
  rows = done.to_dict('records')
  for i, case in enumerate(cases, 1):
    if any(r['executor'] == case.executor and r['model_size'] == case.model_size and
           r['clients_per_round'] == case.clients_per_round for r in rows):
      continue
    log(f'[{i}/{len(cases)}] {case.executor}, {case.model_size}, '
        f'{case.clients_per_round} clients/round')
    row = measure(case, settings)
    log(f'    {row["seconds_per_round"]:.2f} s/round, driver {row["driver_peak_mb"]:,.0f} MB, '
        f'workers {row["worker_peak_mb"]:,.0f} MB')
    rows.append(row)
    if path:
      os.makedirs(output_dir, exist_ok=True)
      pd.DataFrame(rows).to_csv(path, index=False)
  table = add_ratios(pd.DataFrame(rows))
  order = {e: i for i, e in enumerate(CASE_EXECUTORS)}
  table = table.sort_values(['model_size', 'clients_per_round', 'executor'],
                            key=lambda c: c.map(order) if c.name == 'executor' else c)
  if output_dir:
    with open(os.path.join(output_dir, 'benchmark.md'), 'w') as f:
      f.write(to_markdown(table) + '\n')
  return table.reset_index(drop=True)
