"""Checks a run's whole client-state store (every page and every row's hash).

  bazel run //runners:verify_client_state -- --run_dir=output/train/my_run

Training opens a store with a bounded check and verifies each row it reads
(partial_personalization/state/client_state.py); this reads the whole file, e.g.
after a disk fault or before archiving a run. Exit 0 and the rows checked, or
one line naming the problem (exit 2); nothing is changed either way.
"""

from runners import cli  # First: TensorFlow without its start-up noise.
import os
import time

from absl import app
from absl import flags

from partial_personalization.state import client_state
# Imported for its exit hook: TFF's default context, made when TFF is imported,
# otherwise fails noisily in its destructor at interpreter exit.
from partial_personalization.execution import runtime  # pylint: disable=unused-import
from runners import paths

_RUN_DIR = flags.DEFINE_string('run_dir', None, 'A run directory (holding client_state.sqlite), '
                               'or the store file itself.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if not _RUN_DIR.value:
    raise app.UsageError('--run_dir is required: the run directory whose store to check')
  path = paths.resolve_path(_RUN_DIR.value)
  if os.path.isdir(path):
    path = os.path.join(path, 'client_state.sqlite')
  if not os.path.isfile(path):
    raise app.UsageError(f'{path}: no client-state store there (a run of a stateful '
                         'algorithm writes client_state.sqlite in its run directory)')
  start = time.time()
  try:
    store = client_state.ClientStateStore.open_existing(path)
    try:
      rows = store.verify()
      committed = store.committed_round
    finally:
      store.close()
  except client_state.ClientStateError as e:
    raise app.UsageError(str(e)) from e
  size = os.path.getsize(path)
  print(f'{path}: ok, {rows:,} rows ({size / 2**20:,.1f} MiB), committed round {committed}; '
        f'checked in {time.time() - start:.1f} s')


if __name__ == '__main__':
  cli.run(main)
