"""Resumable federated training: sampling, rounds, checkpoints, personal state, metrics.

One loop runs TFF's FedAvg (`tff.learning.templates.LearningProcess`) and our
FedAlt/FedSim (`PersonalizedProcess`) alike through a small adapter,
`round_runners.RoundRunner`. Run directory layout:

  checkpoints/          server state, `tff.program.FileProgramStateManager`
  client_state.sqlite   personal v_i and the last complete round (commit record)
  metrics.csv           per-round metrics keyed by round (`CSVFileReleaseManager`)
  tensorboard/          the same metrics as TensorBoard summaries
  model.npz             the final global model (named weights; `--init_from`)

Commit protocol (all or nothing per round): personal writes of round r, then the
server checkpoint of round r, then `ClientStateStore.commit(r)`, which records
the checkpoint's content hash with the round. On start, the committed round
decides where to resume; checkpoints and personal rows newer than it are
leftovers of an interrupted round and are dropped. Client sampling and data
shuffles are functions of (seed, round), so a resumed run repeats the numbers
of an uninterrupted one.

Guarantees (see docs/design.md, "Run directories"): one writer per run
directory (`run_lock`); nothing is deleted before the saved state checks out
(the committed checkpoint exists and has the recorded hash; a run with
checkpoints has a commit record); a round whose new shared or personal weights
are not finite is refused before it is committed.
"""

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import glob
import logging as py_logging
import os
import shutil
import sqlite3
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tensorflow_federated as tff

from partial_personalization.programs import progress as progress_lib
from partial_personalization.state import client_state
from partial_personalization.state import integrity
from partial_personalization.state import run_lock

ModelWeights = tff.learning.models.ModelWeights
_CHECKPOINT_PREFIX = 'program_state_'


class CheckpointError(RuntimeError):
  """The saved state cannot be resumed: a checkpoint is missing, unreadable or
  not the committed one, or the commit record is missing."""


class NonFiniteError(RuntimeError):
  """A round produced NaN or infinite weights; it was not committed."""


class StorageError(RuntimeError):
  """A write to the run directory failed (disk full, read-only, permission)."""


def run_coroutine(coroutine):
  """Runs a `tff.program` coroutine to completion and returns its result.

  `asyncio.run` refuses to run inside a running event loop, which is where a
  Jupyter notebook's code runs: there the coroutine runs in a worker thread
  with a loop of its own. TensorFlow's INFO lines meanwhile (the SavedModel
  writer logs "Assets written to ..." per checkpoint, which would bury a
  notebook's output) are held back; warnings and errors pass.
  """
  tf_logger = tf.get_logger()
  level = tf_logger.level
  tf_logger.setLevel(max(level, py_logging.WARNING))
  try:
    try:
      asyncio.get_running_loop()
    except RuntimeError:
      return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
      return pool.submit(asyncio.run, coroutine).result()
  finally:
    tf_logger.setLevel(level)


@contextlib.contextmanager
def writing(path: str, store: client_state.ClientStateStore):
  """Turns a failed write to `path` into a `StorageError` naming it; the run
  resumes after `store`'s last committed round once the cause is fixed."""
  try:
    yield
  except (OSError, sqlite3.OperationalError, tf.errors.ResourceExhaustedError,
          tf.errors.PermissionDeniedError, tf.errors.FailedPreconditionError) as e:
    raise StorageError(
        f'cannot write {path}: {getattr(e, "message", None) or e}. Free disk space or fix '
        f'the permissions, then run the same command again: it resumes after round '
        f'{store.committed_round}, the last one committed.') from e


# `client_sampling`: how each round's clients are drawn.
CLIENT_SAMPLING = ('uniform', 'balanced')


def sample_clients(client_ids: Sequence[str], num_clients: int, seed: int,
                   round_num: int, sampling: str = 'uniform') -> list[str]:
  """The clients of round `round_num`, a pure function of (seed, round).

  `uniform`: a uniform sample without replacement each round (TFF's
  `build_uniform_sampling_fn`; a client's participations are binomial, so
  some clients of a short run never train). `balanced`: each round takes the
  `num_clients` clients that have participated least so far, ties broken by a
  seeded random order of that round; after R rounds every client has
  participated floor or ceil of R * num_clients / len(client_ids) times (the
  regime of Pillutla et al. 2022, where every client trains its personal part
  many times). Balanced rounds replay the earlier rounds' choices: O(R n log n).

  Raises:
    ValueError: more clients than the population, or an unknown `sampling`.
  """
  if num_clients > len(client_ids):
    raise ValueError(
        f'clients_per_round={num_clients} exceeds the {len(client_ids)} training clients')
  if sampling == 'uniform':
    rng = np.random.default_rng([seed, round_num])
    chosen = rng.choice(len(client_ids), num_clients, replace=False)
  elif sampling == 'balanced':
    counts = np.zeros(len(client_ids), np.int64)
    for r in range(1, round_num + 1):
      order = np.random.default_rng([seed, r]).permutation(len(client_ids))
      rank = np.empty_like(order)
      rank[order] = np.arange(len(order))
      chosen = np.lexsort((rank, counts))[:num_clients]
      counts[chosen] += 1
  else:
    raise ValueError(f'`client_sampling` must be one of {CLIENT_SAMPLING}, got {sampling!r}')
  return [client_ids[i] for i in sorted(chosen)]


def dataset_seed(seed: int, round_num: int, index: int) -> int:
  """Shuffle seed of the `index`-th sampled client of a round."""
  return int(np.random.default_rng([seed, round_num, index]).integers(2**31 - 1))


def flatten_metrics(metrics, prefix='') -> dict[str, float]:
  """Nested metrics -> {'client_work/loss': 1.2, ...} (scalars only)."""
  flat = {}
  items = metrics.items() if hasattr(metrics, 'items') else []
  for key, value in items:
    name = f'{prefix}{key}'
    if hasattr(value, 'items'):
      flat.update(flatten_metrics(value, name + '/'))
    elif np.ndim(value) == 0:
      flat[name] = float(value)
  return flat


def _checkpoint_path(checkpoint_dir: str, version: int) -> str:
  # FileProgramStateManager's layout: <root>/<prefix><version>.
  return os.path.join(checkpoint_dir, f'{_CHECKPOINT_PREFIX}{version}')


@dataclasses.dataclass
class TrainingResult:
  state: Any
  rounds_run: int
  resumed_from: int
  seconds: float


def run_training(
    runner: Any,  # round_runners.RoundRunner
    *,
    run_dir: str,
    store: client_state.ClientStateStore,
    client_ids: Sequence[str],
    make_dataset: Callable[[str, int], Any],
    total_rounds: int,
    clients_per_round: int,
    seed: int,
    rounds_per_checkpoint: int = 1,
    rounds_per_eval: int = 0,
    eval_fn: Optional[Callable[[Any, int], dict]] = None,
    progress: bool = True,
    stop_after_rounds: Optional[int] = None,
    client_sampling: str = 'uniform',
) -> TrainingResult:
  """Runs (or resumes) rounds 1..total_rounds.

  Args:
    runner: The process adapter.
    run_dir: Output directory (see the module docstring).
    store: The run's `ClientStateStore` (its committed round is the commit
      record, also for FedAvg, which stores no personal weights).
    client_ids: Training client population.
    make_dataset: (client id, shuffle seed) -> preprocessed dataset.
    total_rounds, clients_per_round, seed: as the runner flags.
    client_sampling: `uniform` or `balanced` (`sample_clients`).
    rounds_per_checkpoint: Commit every k rounds (and after the last one).
    rounds_per_eval, eval_fn: Every k rounds, `eval_fn(state, round)` returns
      scalar metrics released with prefix `eval/`.
    progress: Show a tqdm bar with ETA and live metrics.
    stop_after_rounds: Stop after this many rounds of this call (tests use it
      to simulate an interruption).

  Returns:
    `TrainingResult` with the final state.

  Raises:
    CheckpointError: the committed round's checkpoint is missing, corrupt or
      not the one committed (content hash), checkpoints exist without a commit
      record, or `total_rounds` is below the committed round; the message
      names the file, and no saved state is modified then.
    NonFiniteError: a round produced non-finite weights (not committed).
    run_lock.LockedError: another process is writing `run_dir`.
  """
  with run_lock.exclusive(run_dir):
    return _run_training(
        runner, run_dir=run_dir, store=store, client_ids=client_ids,
        make_dataset=make_dataset, total_rounds=total_rounds,
        clients_per_round=clients_per_round, seed=seed,
        rounds_per_checkpoint=rounds_per_checkpoint, rounds_per_eval=rounds_per_eval,
        eval_fn=eval_fn, progress=progress, stop_after_rounds=stop_after_rounds,
        client_sampling=client_sampling)


def check_total_rounds(store: client_state.ClientStateStore, total_rounds: int) -> None:
  """Refuses `total_rounds` below the store's committed round (the run is
  past it; resuming would leave the saved settings and the model disagreeing).

  Raises:
    CheckpointError: naming the store and the fix.
  """
  committed = store.committed_round
  if committed > total_rounds:
    raise CheckpointError(
        f'{store.path}: round {committed} is committed, past total_rounds={total_rounds}. '
        f'Resume with `total_rounds` >= {committed}, or start a new run with another '
        '`experiment_name`. Nothing was changed.')


def _verify_saved_state(checkpoint_dir: str, store, total_rounds: int,
                        versions: list[int]) -> None:
  """Refuses to resume (or start over) from saved state that does not agree."""
  committed = store.committed_round
  if committed == 0 and versions:
    raise CheckpointError(
        f'{checkpoint_dir} holds checkpoints of rounds {sorted(versions)} but {store.path} '
        'has no committed round: the personal-state store (the commit record) was '
        'deleted or replaced. Restore it, or start a new run with another '
        '`experiment_name`. Nothing was deleted.')
  check_total_rounds(store, total_rounds)
  expected = store.checkpoint_hash(committed) if committed else None
  if expected:
    path = _checkpoint_path(checkpoint_dir, committed)
    actual = integrity.tree_sha256(path) if os.path.isdir(path) else None
    if actual != expected:
      raise CheckpointError(
          f'cannot resume: {path} is not the checkpoint committed for round {committed} '
          f'in {store.path} (content hash {actual and actual[:12]} != {expected[:12]}): '
          'it was modified, replaced or copied from another round or run. Restore it, '
          'or start a new run with another `experiment_name`. Nothing was deleted.')


def _run_training(runner, *, run_dir, store, client_ids, make_dataset, total_rounds,
                  clients_per_round, seed, rounds_per_checkpoint, rounds_per_eval, eval_fn,
                  progress, stop_after_rounds, client_sampling) -> TrainingResult:
  checkpoint_dir = os.path.join(run_dir, 'checkpoints')
  state_manager = tff.program.FileProgramStateManager(
      checkpoint_dir, prefix=_CHECKPOINT_PREFIX, keep_total=3, keep_first=False)
  state = runner.initialize()
  versions = run_coroutine(state_manager.get_versions()) or []
  _verify_saved_state(checkpoint_dir, store, total_rounds, versions)
  committed = store.committed_round
  if committed > 0:
    path = _checkpoint_path(checkpoint_dir, committed)
    try:
      state = run_coroutine(state_manager.load(committed, state))
    except Exception as e:
      raise CheckpointError(
          f'cannot resume: round {committed} is committed in {store.path} but its '
          f'checkpoint {path} is missing or unreadable ({type(e).__name__}: {e}). '
          'Restore that directory, or start a new run with another '
          '`experiment_name`. Nothing was deleted.') from e
    logging.info('Resuming after round %d from %s', committed, path)
  # Leftovers of an interrupted round: checkpoints and personal rows past the
  # commit, and the state manager's temporary folders of an interrupted save.
  for version in versions:
    if version > committed:
      shutil.rmtree(_checkpoint_path(checkpoint_dir, version))
  for temp in glob.glob(os.path.join(checkpoint_dir, f'{_CHECKPOINT_PREFIX}*_temp*')):
    shutil.rmtree(temp, ignore_errors=True)
  dropped = store.rollback()
  if dropped:
    logging.info('Dropped %d personal-state rows of an interrupted round', dropped)
  # Created once the saved state checks out: each writes a file when built.
  releases = [
      tff.program.CSVFileReleaseManager(os.path.join(run_dir, 'metrics.csv'), key_fieldname='round'),
      tff.program.TensorBoardReleaseManager(os.path.join(run_dir, 'tensorboard')),
  ]

  start = time.time()
  last = total_rounds if stop_after_rounds is None else min(total_rounds, committed + stop_after_rounds)
  bar = progress_lib.bar(total=total_rounds, initial=committed, disable=not progress,
                         unit='round', dynamic_ncols=True, desc=os.path.basename(run_dir))
  try:
    for round_num in range(committed + 1, last + 1):
      ids = sample_clients(client_ids, clients_per_round, seed, round_num, client_sampling)
      datasets = [make_dataset(cid, dataset_seed(seed, round_num, i)) for i, cid in enumerate(ids)]
      state, metrics = runner.run_round(state, round_num, ids, datasets)
      if not integrity.all_finite(runner.global_weights(state)):
        raise NonFiniteError(
            f'round {round_num}: the shared weights are not finite (NaN or inf) after the '
            f'update of clients {ids}; the round was not committed. Lower the learning '
            'rates or clip the steps (`clip_norm`), then resume.')
      flat = {f'train/{k}': v for k, v in flatten_metrics(metrics).items()}
      if eval_fn is not None and rounds_per_eval and (
          round_num % rounds_per_eval == 0 or round_num == total_rounds):
        flat.update({f'eval/{k}': v for k, v in eval_fn(state, round_num).items()})
      with writing(run_dir, store):
        for release in releases:
          run_coroutine(release.release(flat, key=round_num))
      if round_num % rounds_per_checkpoint == 0 or round_num == last:
        with writing(checkpoint_dir, store):
          run_coroutine(state_manager.save(state, round_num))
        with writing(store.path, store):
          store.commit(round_num, integrity.tree_sha256(_checkpoint_path(checkpoint_dir, round_num)))
      bar.set_postfix({k.split('/')[-1]: f'{v:.4g}' for k, v in flat.items()
                       if k.endswith(('loss', 'accuracy'))}, refresh=False)
      bar.update(1)
  finally:
    bar.close()
  return TrainingResult(state=state, rounds_run=last - committed,
                        resumed_from=committed, seconds=time.time() - start)
