"""absl flags of the runners (TFF research conventions) and the TFF runtime lifecycle."""

import contextlib
import dataclasses
import re
import signal
import sys
from typing import Optional

from absl import app
from absl import flags
from absl import logging

from partial_personalization import client_state
from partial_personalization import run_lock
from partial_personalization import runtime
from partial_personalization import training_loop
from runners import paths
from runners import config_lib
from tasks.stackoverflow import convert_lib

FLAGS = flags.FLAGS

_HELP = {
    'experiment_name': 'Name of the run; outputs go to <root_output_dir>/<experiment_name>.',
    'root_output_dir': 'Root folder of all runs.',
    'task': 'stackoverflow (next word), emnist (62 characters, FEMNIST writers) or gldv2 '
            '(landmarks).',
    'cache_dir': 'Folder with the task data (default data_cache/<task>): stackoverflow.sqlite and '
                 '.word_count; emnist_all.sqlite; gld23k/ or gld160k/ in TFF\'s cache layout.',
    'algorithm': 'fedavg (TFF, non-personalized), fedalt, fedsim, ffgg (fine-tuning followed '
                 'by global gradient), fedrecon (TFF build_fed_recon, stateless), ditto or '
                 'pfedme (full personalization; use --personalization=none).',
    'personalization': 'Which parameters are personal. stackoverflow: none, embeddings, '
                       'first_block, last_block (default), decoder, adapter (needs '
                       '--adapter_size), full. emnist, gldv2: none, stem, head (default), '
                       'adapter, representation, full. FedAvg, Ditto, pFedMe: none.',
    'model_size': 'stackoverflow: tiny or mini (the paper\'s 5.7M-parameter transformer).',
    'adapter_size': 'stackoverflow: adapter bottleneck size (0: no adapters).',
    'dropout': 'Dropout rate of the model (regularization).',
    'vocab_size': 'stackoverflow: vocabulary words (tokens = words + 4).',
    'model': 'emnist: cnn (default) or resnet18; gldv2: resnet18 (default) or mobilenet_v2.',
    'width_multiplier': 'emnist, gldv2: scales every layer width (1: published sizes).',
    'heldout_fraction': 'emnist, gldv2: expected fraction of each client\'s train examples held '
                        'out (periodic evaluation, heldout gating).',
    'gldv2_variant': 'gldv2: gld23k (233 clients, 203 classes) or gld160k (1,262, 2,028).',
    'image_size': 'gldv2: images are resized to this side (pixels).',
    'crop_size': 'gldv2: side of the random (train) or central (test) crop; the model input.',
    'client_optimizer': 'Local optimizer of u (and v).',
    'client_learning_rate': 'Local learning rate of u.',
    'personal_learning_rate': 'Local learning rate of v (default: client_learning_rate).',
    'server_optimizer': 'Server optimizer applied to the mean update of u.',
    'server_learning_rate': 'Server learning rate (peak, with a schedule).',
    'server_lr_schedule': 'constant, or warmup_decay: linear warmup over '
                          '--server_warmup_fraction of --total_rounds, then linear decay to 0.',
    'server_warmup_fraction': 'Share of the rounds spent warming up (warmup_decay).',
    'clip_norm': 'Clip each local step\'s gradient to this global norm, separately for u '
                 'and v (0: no clipping; the reference code uses 0.25).',
    'total_rounds': 'Number of rounds (0: only evaluate the start model, e.g. with finetuning).',
    'clients_per_round': 'Clients sampled per round (m).',
    'client_sampling': 'uniform (a uniform sample each round) or balanced (the clients that '
                       'participated least so far: every client trains R * m / n times).',
    'client_batch_size': 'Local batch size.',
    'max_examples_per_client': 'Cap on examples a client uses per round.',
    'tau_u': 'Local epochs/steps on the shared part u.',
    'tau_v': 'Local epochs/steps on the personal part v (FedAlt); ffgg: full-batch '
             'fine-tuning steps (Algorithm 2).',
    'local_unit': 'Unit of tau_u and tau_v: epochs or steps.',
    'stateless': 'FedAlt/FedSim with v_i reset to v_0 at every participation (FedRecon setting); '
                 'evaluation reconstructs v_i on the train split first.',
    'personal_l2': 'Weight decay of the personal part in FedAlt/FedSim.',
    'prox_strength': 'lambda of Ditto and pFedMe (pull toward the global model).',
    'inner_steps': 'pFedMe inner steps K per batch.',
    'local_steps': 'ffgg: full-batch steps on u per round (1: FFGG, > 1: Local FFGG, '
                   'Mishchenko et al. Algorithm 4).',
    'aggregator': 'Aggregation of the u updates: mean (example-weighted), median '
                  '(coordinate-wise) or trimmed_mean (Byzantine-robust).',
    'trim_fraction': 'trimmed_mean: fraction trimmed at each end, in [0, 0.5).',
    'bucket_size': 'Bucketing before the aggregator: shuffle, average buckets of this many '
                   'updates (1: none).',
    'client_weighting': 'Weight of each client\'s u update in the mean: examples (its '
                        'example count, as FedAvg) or uniform (1 each, as FFGG\'s 1/n sum).',
    'byzantine_fraction': 'Simulated attack: fraction of the training clients that are '
                          'Byzantine (a fixed, seeded set); 0: none.',
    'attack': 'What Byzantine clients send: flip (-attack_scale * update) or noise '
              '(Gaussian, std attack_scale).',
    'attack_scale': 'Scale of the attack.',
    'asynchronous': 'Simulated asynchronous training: the server applies each update as it '
                    'arrives, computed from a stale u (Mishchenko et al. Algorithm 3).',
    'async_concurrency': 'Clients in flight (0: clients_per_round).',
    'async_delay': 'Delay distribution: exponential, uniform (0 to 2 x mean) or constant.',
    'async_delay_mean': 'Mean delay (simulated time units).',
    'async_slow_fraction': 'Fraction of clients that are slow (fixed, seeded set).',
    'async_slow_factor': 'Delay multiplier of slow clients.',
    'async_delay_adaptive': 'Scale each update by min(1, concurrency / staleness).',
    'groups': 'Client groups: metadata (stackoverflow: the site), csv:PATH (client_id,group) '
              'or kmeans:K (label histograms).',
    'client_group': 'Train and report only this group\'s clients (group fine-tuning).',
    'finetune_epochs': 'Before testing, finetune each client\'s personal part for this many '
                       'epochs on its train split (0: none; stateless runs default to tau_v).',
    'finetune_learning_rate': 'Learning rate of that finetuning (default: personal_learning_rate).',
    'finetune_personalization': 'With --algorithm=fedavg: the part finetuned at evaluation '
                                '(local finetuning baseline; default full).',
    'report_clients': 'Clients in the final report (0: all with train and test data; else a '
                      'seeded sample).',
    'rounds_per_eval': 'Evaluate on heldout data every k rounds (0: never).',
    'eval_clients': 'Clients in the periodic heldout evaluation.',
    'rounds_per_checkpoint': 'Commit (checkpoint) every k rounds.',
    'seed': 'Seed of initialization, client sampling and shuffles.',
    'init_from': 'Start from this run directory\'s model.npz (e.g. FedAvg pretraining).',
    'init_checkpoint': 'Pretrained weights (.npz of named weights or Keras .h5) loaded where '
                       'name and shape match, e.g. a backbone; default: from scratch.',
    'baseline_model': 'Non-personalized model (run dir or .npz) for the report; default: the start model.',
    'report': 'Write the per-client report at the end (personalized runs).',
    'progress': 'Show progress bars.',
}


def define_executor_flags():
  """--executor and its settings (runtime.ExecutorConfig); none changes results."""
  flags.DEFINE_enum('executor', 'local', runtime.EXECUTORS,
                    'Where computations run: local (TFF C++ runtime), remote (TFF workers '
                    'given by --workers) or accelerated (TensorFlow on GPUs / logical CPUs).')
  flags.DEFINE_integer('max_concurrent_computation_calls', 0,
                       'local: clients trained at once by the C++ runtime (0: two per core; '
                       '< 0: no limit).')
  flags.DEFINE_list('workers', [], 'remote: host:port of each TFF worker '
                    '(bazel run //runners:worker -- --port=PORT on each machine).')
  flags.DEFINE_list('client_devices', [], 'accelerated: TensorFlow devices of client work, '
                    'e.g. GPU:0,GPU:1 (default: all GPUs, else all logical CPUs).')
  flags.DEFINE_string('server_device', None,
                      'accelerated: device of the server update (default: first client device).')


def executor_config_from_flags() -> runtime.ExecutorConfig:
  return runtime.ExecutorConfig(
      executor=FLAGS.executor,
      max_concurrent_computation_calls=FLAGS.max_concurrent_computation_calls,
      workers=tuple(FLAGS.workers), client_devices=tuple(FLAGS.client_devices),
      server_device=FLAGS.server_device)


def define_train_flags():
  """Defines one flag per `TrainConfig` field, with its default."""
  for field in dataclasses.fields(config_lib.TrainConfig):
    default = field.default
    help_text = _HELP[field.name]
    if field.name == 'experiment_name':
      flags.DEFINE_string(field.name, None, help_text, required=True)
    elif field.type in ('bool', bool):
      flags.DEFINE_bool(field.name, default, help_text)
    elif field.type in ('int', int):
      flags.DEFINE_integer(field.name, default, help_text)
    elif field.type in ('float', float) or 'float' in str(field.type):
      flags.DEFINE_float(field.name, default, help_text)
    else:
      flags.DEFINE_string(field.name, default, help_text)


def config_from_flags(**overrides) -> config_lib.TrainConfig:
  """The flags' `TrainConfig` (relative paths resolve in `TrainConfig`)."""
  values = {f.name: FLAGS[f.name].value for f in dataclasses.fields(config_lib.TrainConfig)}
  values.update(overrides)
  return config_lib.TrainConfig(**values)


# Errors of the user's making (flags, missing files, unusable saved state, a
# full or read-only disk: OSError names the path): one clear line instead of a
# traceback. Anything else is a bug and keeps its trace.
USER_ERRORS = (ValueError, OSError,
               training_loop.CheckpointError, training_loop.NonFiniteError,
               training_loop.StorageError,
               client_state.ClientStateError, run_lock.LockedError)


_ARGUMENT = re.compile(r'`([a-z][a-z0-9_]*)(=[^`]*)?`')


def as_flags(message: str) -> str:
  """A library message with its arguments named as this binary's flags.

  The library names arguments in backquotes (`trim_fraction`,
  `groups=kmeans:K`); where a flag of that name is defined, the user sees the
  flag (--trim_fraction, --groups=kmeans:K). Other backquoted text is kept.
  """
  def flag(match):
    return f'--{match.group(1)}{match.group(2) or ""}' if match.group(1) in FLAGS else match.group(0)

  return _ARGUMENT.sub(flag, message)


def exit_on_user_error(fn, *args, **kwargs):
  """Calls fn; on a user error prints `error: <message>` (arguments named as
  flags, `as_flags`) and exits with 2."""
  try:
    return fn(*args, **kwargs)
  except USER_ERRORS as e:
    print(f'error: {as_flags(str(e))}', file=sys.stderr)
    sys.exit(2)


def job_main(run_fn):
  """An absl `main` for jobs without positional arguments: quiet logs, then
  `run_fn()` with user errors reported in one line."""

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    quiet_logs()
    exit_on_user_error(run_fn)

  return main


def ensure_converted(dump_dirs, data_dir: str, min_examples: int) -> None:
  """Converts the Stack Exchange dumps into `data_dir`, or reuses the
  conversion there if it was made from the same dumps and settings (else a
  one-line error naming both; `convert_lib.ensure_converted`)."""
  convert_lib.ensure_converted([paths.resolve_path(d) for d in dump_dirs], data_dir,
                               min_examples=min_examples)


def quiet_logs():
  """INFO logs (TFF's per-checkpoint lines) would break the progress bar; --verbosity overrides."""
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


@contextlib.contextmanager
def tff_runtime(executor: Optional[runtime.ExecutorConfig] = None):
  """Runs the body with the executor of the flags (or `executor`) installed,
  and shuts TFF's local worker down after.

  Also on errors, Ctrl-C and SIGTERM (turned into KeyboardInterrupt here), so
  no worker process is left behind. A bad executor setting or an unreachable
  worker exits with a one-line error.
  """
  def on_sigterm(signum, frame):
    del signum, frame
    raise KeyboardInterrupt('SIGTERM')

  previous = signal.signal(signal.SIGTERM, on_sigterm)
  # A job started in the background by a script inherits SIGINT ignored; TFF's
  # worker would inherit that too, and TFF stops it with SIGINT and waits, so
  # every runtime restart or shutdown would hang. Restore the default first.
  if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    exit_on_user_error(lambda: runtime.set_executor(executor or executor_config_from_flags()))
    yield
  finally:
    runtime.shutdown_tff_runtime()
    signal.signal(signal.SIGTERM, previous)
