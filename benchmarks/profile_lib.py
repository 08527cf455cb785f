"""Where a round's per-client time goes: the profile behind docs/benchmarks.md.

`profile(settings)` runs in a fresh process and times, per client, each part
of one FedAlt training round (tiny transformer, `last_block` personal, the
local executor) and of the report's evaluation, on the real Stack Exchange
clients of `settings.data_dir`:

  dataset construction   Python time to build the client's tf.data pipeline:
                         TFF's reader + preprocessing ('reader') or our token
                         ids ('token ids');
  dataset serialization  `tf.data` graph serialization, which TFF does for
                         every dataset argument, and its size;
  store read / write     the round's v_i from / to the SQLite store;
  TFF call, fixed part   intercept of round CPU (driver + worker) against
                         batches per client, from rounds of 1 and of
                         `max_batches` batches: transfer, function set-up,
                         optimizer and metric initialization, results;
  TFF call, per batch    slope of the same fit, for a v step plus a u step;
  plain TF, per batch    the same v and u steps in a plain traced loop, one
                         client at a time, TensorFlow's default threads (the
                         compute itself);
  metrics, per batch     accuracy and loss updates, measured in the plain loop;
  checkpoint             `tff.program.FileProgramStateManager.save` of the
                         server state (once per commit, not per client).

Evaluation: dataset construction (both paths) and one federated evaluation
call over `eval_clients` clients, against the same forward passes in plain TF.
"""

import asyncio
import dataclasses
import os
import tempfile
import time

import numpy as np
import pandas as pd

from benchmarks import benchmark_lib


@dataclasses.dataclass(frozen=True)
class ProfileSettings:
  data_dir: str
  clients: int = 12
  max_batches: int = 8  # of 16 sentences: 128 sentences, as the main job
  eval_clients: int = 64
  repeats: int = 2
  seed: int = 0


def _timed(fn, repeats=1):
  """(wall s, process CPU s) of fn(), the best of `repeats`, and its result."""
  best, result = None, None
  for _ in range(repeats):
    start, cpu = time.perf_counter(), benchmark_lib.process_cpu_seconds()
    result = fn()
    sample = (time.perf_counter() - start, benchmark_lib.process_cpu_seconds() - cpu)
    best = sample if best is None or sample[0] < best[0] else best
  return best, result


def _profile_in_child(settings: ProfileSettings, queue) -> None:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from partial_personalization.execution import runtime
  from partial_personalization.programs import training_loop
  from partial_personalization.state import client_state
  # pylint: enable=g-import-not-at-top
  import tensorflow_federated as tff  # pylint: disable=g-import-not-at-top
  from runners import config_lib  # pylint: disable=g-import-not-at-top
  from runners import builders_lib  # pylint: disable=g-import-not-at-top
  from runners import weights_lib  # pylint: disable=g-import-not-at-top
  rows = []

  def add(stage, part, seconds, per, note=''):
    rows.append(dict(stage=stage, part=part, ms_per_client=1000 * seconds / per, note=note))

  try:
    runtime.set_executor(runtime.ExecutorConfig())
    with tempfile.TemporaryDirectory() as tmp:
      base = benchmark_lib.Case('local', 'fedalt', 'tiny', settings.clients)
      bench = benchmark_lib.Settings(data_dir=settings.data_dir, seed=settings.seed,
                                     max_examples_per_client=16 * settings.max_batches)
      config = benchmark_lib._train_config(base, bench, os.path.join(tmp, 'run'))  # pylint: disable=protected-access
      task = config_lib.create_task(config)
      ids = training_loop.sample_clients(sorted(task.train_data.client_ids), settings.clients,
                                         settings.seed, 1)
      seeds = [training_loop.dataset_seed(settings.seed, 1, i) for i in range(len(ids))]
      task.train_dataset(ids[0], 0)  # Loads (or builds) the token cache.
      n = len(ids)

      # Datasets: construction and serialization, both paths.
      reader = lambda: [task.train_preprocess_fn(task.train_data.create_tf_dataset_for_client(c),
                                                 s) for c, s in zip(ids, seeds)]
      tokens = lambda: [task.train_dataset(c, s) for c, s in zip(ids, seeds)]
      for name, build in (('reader', reader), ('token ids', tokens)):
        (wall, _), datasets = _timed(build, settings.repeats)
        add('train', f'dataset construction ({name})', wall, n)
        (wall, _), graphs = _timed(lambda: [d._as_serialized_graph().numpy() for d in datasets],  # pylint: disable=protected-access
                                   settings.repeats)
        add('train', f'dataset serialization ({name})', wall, n,
            f'{np.mean([len(g) for g in graphs]) / 1024:.0f} KB per client')

      # Store reads and writes of a round.
      named_init = weights_lib.initial_named_weights(task, config)
      _, v0 = task.partition.split(named_init)
      store = client_state.ClientStateStore(os.path.join(tmp, 'store.sqlite'), v0)
      (wall, _), _ = _timed(lambda: store.write(1, ids, [v0] * n), settings.repeats)
      add('train', 'store write (one transaction)', wall, n)
      (wall, _), _ = _timed(lambda: store.read(ids, before_round=2), settings.repeats)
      add('train', 'store read', wall, n)

      # The TFF call: fixed and per-batch CPU from rounds of 1 and max_batches batches.
      runner = builders_lib.build_runner(config, task, named_init, store)
      state = runner.initialize()
      pids = benchmark_lib._worker_pids()  # pylint: disable=protected-access
      cpu_all = lambda: benchmark_lib.process_cpu_seconds() + sum(
          benchmark_lib.process_cpu_seconds(p) for p in pids)
      per_batches = {}
      for batches in (1, settings.max_batches):
        sets = [task.train_dataset(c, s).take(batches) for c, s in zip(ids, seeds)]
        runner.run_round(state, 1, ids, sets)  # Warm-up: tracing, worker caches.
        samples = []
        for _ in range(settings.repeats):
          start = cpu_all()
          runner.run_round(state, 1, ids, sets)
          samples.append(cpu_all() - start)
        per_batches[batches] = min(samples) / n
      slope = (per_batches[settings.max_batches] - per_batches[1]) / (settings.max_batches - 1)
      add('train', 'TFF call, fixed part (CPU)', per_batches[1] - slope, 1)
      add('train', 'TFF call, per batch: v step + u step (CPU)', slope, 1)

      # The same steps in plain TF, one client at a time: the compute and metrics' share.
      client = benchmark_lib._PlainClient(task, config)  # pylint: disable=protected-access
      stacked = [benchmark_lib._stacked(task.train_dataset(c, s)) for c, s in zip(ids, seeds)]  # pylint: disable=protected-access
      client.train(*stacked[0])
      (_, cpu), _ = _timed(lambda: [client.train(*x) for x in stacked], settings.repeats)
      add('train', 'plain TF, per batch: v step + u step (CPU)',
          cpu / sum(len(x[2]) for x in stacked), 1)
      metric, loss_metric = task.metrics_fn()[0], tf.keras.metrics.Mean()
      logits = client.model(stacked[0][0][0], training=False)
      labels = stacked[0][1][0]
      @tf.function
      def update():
        metric.update_state(labels, logits)
        loss_metric.update_state(1.0)

      update()
      (_, cpu), _ = _timed(lambda: [update() for _ in range(50)], settings.repeats)
      add('train', 'metrics, per batch (CPU)', cpu / 50, 1)

      # Checkpoint of the server state.
      manager = tff.program.FileProgramStateManager(os.path.join(tmp, 'ckpt'))
      versions = iter(range(1, 100))
      (wall, _), _ = _timed(lambda: asyncio.run(manager.save(state, next(versions))),
                            settings.repeats)
      add('train', 'checkpoint (per commit, not per client)', wall, 1)

      # Evaluation: datasets and one federated call.
      eval_ids = benchmark_lib._eval_inputs(task, dataclasses.replace(  # pylint: disable=protected-access
          bench, eval_clients=settings.eval_clients))[0]
      m = len(eval_ids)
      reader = lambda: [task.eval_preprocess_fn(task.test_data.create_tf_dataset_for_client(c))
                        for c in eval_ids]
      tokens = lambda: [task.eval_dataset('test', c) for c in eval_ids]
      for name, build in (('reader', reader), ('token ids', tokens)):
        (wall, _), _ = _timed(build, settings.repeats)
        add('evaluation', f'dataset construction ({name})', wall, m)
      u = runner.global_weights(state)
      personal = store.read(eval_ids, before_round=2)
      datasets = tokens()
      runner.process.evaluate(u, personal, datasets)  # Warm-up.
      (wall, _), _ = _timed(lambda: runner.process.evaluate(u, personal, datasets),
                            settings.repeats)
      add('evaluation', f'TFF evaluation call, {m} clients (wall)', wall, m)
      start = cpu_all()
      runner.process.evaluate(u, personal, datasets)
      add('evaluation', 'TFF evaluation call (CPU)', cpu_all() - start, m)
      stacked = [benchmark_lib._stacked(d) for d in datasets]  # pylint: disable=protected-access
      client.evaluate(*stacked[0])
      (_, cpu), _ = _timed(lambda: [client.evaluate(*x) for x in stacked], settings.repeats)
      add('evaluation', 'plain TF forward + metrics, one client at a time (CPU)', cpu, m)
      store.close()
    queue.put(rows)
  finally:
    runtime.shutdown_tff_runtime()


def profile(settings: ProfileSettings) -> pd.DataFrame:
  """The per-client profile table (see the module docstring).

  Raises:
    RuntimeError: the profiling process failed (its error is printed above).
  """
  return pd.DataFrame(benchmark_lib.run_in_child(_profile_in_child, settings, what='profiling'))


def to_markdown(table: pd.DataFrame) -> str:
  lines = ['| stage | part | ms per client | note |', '|---|---|---|---|']
  for r in table.itertuples():
    lines.append(f'| {r.stage} | {r.part} | {r.ms_per_client:.1f} | {r.note} |')
  return '\n'.join(lines)
