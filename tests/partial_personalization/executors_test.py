"""The three executors run the same computations to the same numbers.

local (TFF's C++ runtime) is the reference; remote runs on two TFF workers
started here on loopback through `runners/worker.py`; accelerated runs on the
three logical CPU devices made in conftest.py. Rounds of TFF's FedAvg and of
our FedAlt and FedSim (with personal state written back per client) must agree.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import numpy as np
import portpicker
import pytest
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization import algorithms
from partial_personalization.execution import accelerated_context
from partial_personalization.execution import remote_context
from partial_personalization.execution import runtime
from partial_personalization.models import partition as partition_lib
from partial_personalization.programs import round_runners
from partial_personalization.programs import training_loop
from partial_personalization.state import client_state
from partial_personalization.templates import robust_aggregators

pytestmark = pytest.mark.slow  # starts TFF workers and runs every executor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
INPUT_SPEC = (tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32))
NUM_CLIENTS, ROUNDS = 5, 3
TOLERANCE = 1e-5


def keras_model():
  tf.keras.utils.set_random_seed(1)
  x = tf.keras.Input([4])
  h = tf.keras.layers.Dense(8, activation='relu', name='hidden')(x)
  return tf.keras.Model(x, tf.keras.layers.Dense(3, name='head')(h))


def reconstruction_model_fn():
  return partition_lib.build_reconstruction_model(
      keras_model(), lambda m: m.get_layer('head').variables, INPUT_SPEC)


def variable_model_fn():
  return tff.learning.models.from_keras_model(
      keras_model(), loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      input_spec=INPUT_SPEC)


def loss_fn():
  return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def client_datasets(round_num):
  """Clients of different sizes (the mean is example-weighted), new data each round."""
  rng = np.random.default_rng(round_num)
  sets = []
  for i in range(NUM_CLIENTS):
    n = 3 + 4 * i
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 1).astype(np.int32)
    sets.append(tf.data.Dataset.from_tensor_slices((x, y)).batch(4))
  return sets


@pytest.fixture(autouse=True)
def _restore_local_runtime():
  """Tests here switch executors; later test modules expect TFF's local runtime."""
  yield
  runtime.shutdown_tff_runtime()
  runtime.set_executor(runtime.ExecutorConfig())


@pytest.fixture(scope='module')
def processes():
  sgd = tff.learning.optimizers.build_sgdm
  built = {'fedavg': tff.learning.algorithms.build_weighted_fed_avg(
      variable_model_fn, client_optimizer_fn=sgd(0.1), server_optimizer_fn=sgd(1.0))}
  for algorithm in ('fedalt', 'fedsim'):
    built[algorithm] = getattr(algorithms, f'build_{algorithm}_process')(
        reconstruction_model_fn, loss_fn=loss_fn,
        metrics_fn=lambda: [tf.keras.metrics.SparseCategoricalAccuracy()],
        client_optimizer=sgd(0.1), personal_optimizer=sgd(0.05))
  # FFGG with a robust aggregator: its [?, P] accumulator on every executor.
  built['ffgg_median'] = algorithms.build_ffgg_process(
      reconstruction_model_fn, loss_fn=loss_fn, client_optimizer=sgd(0.1),
      server_optimizer=sgd(1.0), client_weighting=tff.learning.ClientWeighting.NUM_EXAMPLES,
      personal_optimizer=sgd(0.05),
      model_aggregator=robust_aggregators.RobustAggregationFactory('median', bucket_size=2))
  return built


@pytest.fixture(scope='module')
def workers():
  """Two TFF workers on loopback, started as users do (runners/worker.py)."""
  ports = [portpicker.pick_unused_port() for _ in range(2)]
  procs = [subprocess.Popen([sys.executable, os.path.join(REPO, 'runners', 'worker.py'),
                             f'--port={port}'], cwd=REPO) for port in ports]
  deadline = time.time() + 60
  for port in ports:
    while not _port_open(port):
      assert time.time() < deadline, 'the TFF workers did not start'
      time.sleep(0.2)
  yield [f'localhost:{port}' for port in ports]
  for proc in procs:
    proc.send_signal(signal.SIGINT)  # Ctrl-C stops a worker, also one started in the background.
  for proc in procs:
    proc.wait(timeout=30)


def _port_open(port) -> bool:
  with socket.socket() as s:
    return s.connect_ex(('localhost', port)) == 0


def run_rounds(process, executor: runtime.ExecutorConfig, tmp_path):
  """ROUNDS rounds through the training loop's runner; returns
  (u per round, metrics per round, final v_i)."""
  runtime.set_executor(executor)
  try:
    initial_v = tff.learning.models.ModelWeights(
        [np.zeros([8, 3], np.float32), np.zeros([3], np.float32)], [])
    if isinstance(process, algorithms.PersonalizedProcess):
      store = client_state.ClientStateStore(
          str(tmp_path / f'{executor.executor}.sqlite'), initial_v)
      runner = round_runners.PersonalizedRunner(process, store,
                                                split_rounds=runtime.splits_rounds())
    else:
      store, runner = None, round_runners.FedAvgRunner(process)
    ids = [f'c{i}' for i in range(NUM_CLIENTS)]
    state = runner.initialize()
    weights, metrics = [], []
    for round_num in range(1, ROUNDS + 1):
      state, m = runner.run_round(state, round_num, ids, client_datasets(round_num))
      weights.append(runner.global_weights(state))
      metrics.append(training_loop.flatten_metrics(m))
    personal = store.read(ids, before_round=ROUNDS + 1) if store else []
    return weights, metrics, personal
  finally:
    runtime.shutdown_tff_runtime()


def assert_same(a, b):
  for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=TOLERANCE)


def assert_same_runs(reference, other):
  (w1, m1, p1), (w2, m2, p2) = reference, other
  assert len(w1) == len(w2) == ROUNDS
  assert_same(w1, w2)
  for round_metrics1, round_metrics2 in zip(m1, m2):
    assert round_metrics1 == pytest.approx(round_metrics2, abs=TOLERANCE)
  assert_same(p1, p2)
  assert len(p1) == len(p2)


@pytest.fixture(scope='module')
def local_runs(processes, tmp_path_factory):
  tmp = tmp_path_factory.mktemp('local')
  return {name: run_rounds(p, runtime.ExecutorConfig('local'), tmp)
          for name, p in processes.items()}


@pytest.mark.parametrize('algorithm', ['fedavg', 'fedalt'])
def test_local_is_bit_exact_whatever_the_concurrency(algorithm, processes, local_runs,
                                                     tmp_path):
  """Same seed, same numbers: one client at a time (the order clients finish
  in is then fixed) gives bit for bit what the default concurrency gives."""
  run = run_rounds(processes[algorithm],
                   runtime.ExecutorConfig('local', max_concurrent_computation_calls=1), tmp_path)
  (w1, m1, p1), (w2, m2, p2) = local_runs[algorithm], run
  for x, y in zip(tf.nest.flatten([w1, p1]), tf.nest.flatten([w2, p2])):
    assert np.array_equal(np.asarray(x), np.asarray(y))
  assert m1 == m2


@pytest.mark.parametrize('algorithm', ['fedavg', 'fedalt', 'fedsim', 'ffgg_median'])
def test_accelerated_matches_local(algorithm, processes, local_runs, tmp_path):
  devices = tuple(d.name for d in tf.config.list_logical_devices('CPU'))
  assert len(devices) == 3, 'conftest.py makes three logical CPUs'
  run = run_rounds(processes[algorithm], runtime.ExecutorConfig(
      'accelerated', client_devices=devices, server_device=devices[2]), tmp_path)
  assert_same_runs(local_runs[algorithm], run)
  # The models did train (the comparison is not between two untouched models).
  assert not np.allclose(run[0][0].trainable[0], run[0][-1].trainable[0])


def test_accelerated_spreads_clients_over_devices(processes):
  context = accelerated_context.AcceleratedContext(('CPU:0', 'CPU:1', 'CPU:2'), 'CPU:0')
  tff.framework.set_default_context(context)
  try:
    p = processes['fedalt']
    state = p.initialize()
    v = [tff.learning.models.ModelWeights(
        [np.zeros([8, 3], np.float32), np.zeros([3], np.float32)], [])] * NUM_CLIENTS
    p.next(state, v, client_datasets(1))
  finally:
    runtime.shutdown_tff_runtime()
  # The server is on CPU:0; TensorFlow ran client work on the other two as well.
  calls = context.calls_by_device
  assert set(calls) == {'/device:CPU:0', '/device:CPU:1', '/device:CPU:2'}
  assert calls['/device:CPU:1'] > 0 and calls['/device:CPU:2'] > 0


def test_accelerated_rejects_unknown_device():
  with pytest.raises(ValueError, match='GPU:7 is not visible'):
    accelerated_context.AcceleratedContext(('GPU:7',))


def test_remote_matches_local(processes, local_runs, workers, tmp_path):
  for algorithm in ('fedavg', 'fedalt', 'ffgg_median'):
    run = run_rounds(processes[algorithm],
                     runtime.ExecutorConfig('remote', workers=tuple(workers)), tmp_path)
    assert_same_runs(local_runs[algorithm], run)


def test_remote_returns_clients_in_order(processes, workers):
  """The first worker gets a slow client, so the second finishes first;
  TFF's own mergeable context would then return the second slice first."""
  evaluate = processes['fedalt'].evaluate
  rng = np.random.default_rng(0)
  sizes = [40000, 1, 2, 3]
  sets = [tf.data.Dataset.from_tensor_slices(
      (rng.normal(size=(n, 4)).astype(np.float32), np.zeros(n, np.int32))).batch(4)
          for n in sizes]
  u = tff.learning.models.ModelWeights(
      [np.ones([4, 8], np.float32), np.zeros([8], np.float32)], [])
  v = [tff.learning.models.ModelWeights(
      [np.ones([8, 3], np.float32), np.zeros([3], np.float32)], [])] * len(sizes)
  runtime.set_executor(runtime.ExecutorConfig('remote', workers=tuple(workers)))
  try:
    results = evaluate(u, v, sets)
  finally:
    runtime.shutdown_tff_runtime()
  counts = [float(r['loss'][1]) for r in results]
  assert counts == [float(np.ceil(n / 4)) for n in sizes]  # batches per client, in order


def test_remote_unreachable_worker_is_a_clear_error():
  port = portpicker.pick_unused_port()
  start = time.time()
  with pytest.raises(remote_context.WorkerUnavailableError,
                     match=f'bazel run //runners:worker -- --port={port}'):
    remote_context.RemoteContext([f'localhost:{port}'], timeout_seconds=1)
  assert time.time() - start < 10


@pytest.mark.parametrize('workers,message', [
    ('', 'needs `workers='), ('localhost', 'is not host:port'), ('host:port', 'is not host:port')])
def test_remote_bad_workers_flag(workers, message):
  with pytest.raises(ValueError, match=message):
    remote_context.parse_workers(workers)


def test_executor_flags_checked():
  with pytest.raises(ValueError, match='`executor` must be one of'):
    runtime.ExecutorConfig('gpu')
  with pytest.raises(ValueError, match='`workers` is for `executor=remote`'):
    runtime.ExecutorConfig('local', workers=('a:1',))
  with pytest.raises(ValueError, match='are for `executor=accelerated`'):
    runtime.ExecutorConfig('remote', workers=('a:1',), client_devices=('GPU:0',))


_LONG_JOB = '''
import sys
sys.path.insert(0, {repo!r})
import tensorflow as tf
import tensorflow_federated as tff
from partial_personalization.execution import runtime
from runners import flags_lib

@tff.tensorflow.computation
def spin():
  return tf.reduce_sum(tf.random.uniform([1000, 1000]) @ tf.random.uniform([1000, 1000]))

with flags_lib.tff_runtime(runtime.ExecutorConfig('local')):
  spin()
  print('worker started', flush=True)
  {action}
'''


def _workers_with_marker(marker: str) -> list[int]:
  """TFF worker processes whose environment carries `marker` (inherited)."""
  pids = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/environ', 'rb') as f:
        env = f.read()
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        cmd = f.read()
    except OSError:
      continue
    if marker.encode() in env and b'worker_binary' in cmd:
      pids.append(int(pid))
  return pids


@pytest.mark.parametrize('action,how', [
    ('sys.stdin.readline(); raise ValueError("boom")', 'error'),
    ('while True: spin()', 'sigint'),
    ('while True: spin()', 'sigterm'),
    ('while True: spin()', 'sigkill')])  # As the OOM killer: only the Python process.
def test_local_worker_stops_on_error_and_signals(action, how):
  marker = f'PP_TEST_{uuid.uuid4().hex}'
  env = {**os.environ, marker: '1'}
  proc = subprocess.Popen([sys.executable, '-c', _LONG_JOB.format(repo=REPO, action=action)],
                          env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  try:
    assert proc.stdout.readline().strip() == 'worker started'
    assert _workers_with_marker(marker), 'the job runs a TFF worker'
    if how == 'error':
      proc.stdin.write('go\n')
      proc.stdin.flush()
    else:
      proc.send_signal({'sigint': signal.SIGINT, 'sigterm': signal.SIGTERM,
                        'sigkill': signal.SIGKILL}[how])
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode != 0
  deadline = time.time() + 10
  while _workers_with_marker(marker) and time.time() < deadline:
    time.sleep(0.2)
  assert not _workers_with_marker(marker), 'a TFF worker outlived its job'


_DROP_CONTEXT = '''
import gc, signal, sys
sys.path.insert(0, {repo!r})
import tensorflow_federated as tff
from partial_personalization import algorithms
from partial_personalization.execution import runtime
from partial_personalization.execution.tff_compat import runtime_error_context
from partial_personalization.programs import round_runners

assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # As a background job's.
runtime.set_executor(runtime.ExecutorConfig('local'))  # Starts the worker.
# TFF stops a dropped context's worker with SIGINT and waits for it.
tff.framework.set_default_context(runtime_error_context.RuntimeErrorContext())
gc.collect()
print('context replaced', flush=True)
'''


def test_background_job_can_drop_the_local_context():
  """A job started in the background (SIGINT ignored, inherited by its
  children) replaces the local context without our shutdown: TFF's own
  SIGINT must still stop the worker, not hang the job."""
  # The shell ignores SIGINT as a background job would, and exec keeps that
  # (no preexec_fn: forking this multithreaded process to run Python is unsafe).
  proc = subprocess.Popen(
      ['sh', '-c', 'trap "" INT; exec "$0" -c "$1"', sys.executable,
       _DROP_CONTEXT.format(repo=REPO)],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    out, err = proc.communicate(timeout=90)
  finally:
    if proc.poll() is None:
      proc.kill()
      pytest.fail('the job hung stopping its TFF worker')
  assert proc.returncode == 0, err[-2000:]
  assert 'context replaced' in out
