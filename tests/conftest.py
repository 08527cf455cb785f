"""Shared test set-up: quiet TF logs, real data location, clean TFF shutdown."""

import os

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf  # pylint: disable=g-import-not-at-top

# Three logical CPUs for the accelerated executor's tests (executors_test.py);
# possible only before TensorFlow initializes its devices, hence here.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices('CPU')[0], [tf.config.LogicalDeviceConfiguration()] * 3)


def shared_data_dir() -> str:
  """`../shared/data` beside the repository (or $SHARED_DATA_DIR).

  realpath() follows Bazel's runfiles symlinks back to the source tree.
  """
  if os.environ.get('SHARED_DATA_DIR'):
    return os.environ['SHARED_DATA_DIR']
  repo = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
  return os.path.join(os.path.dirname(repo), 'shared', 'data')


# Two small real Stack Exchange sites: with 80 sentences per client, 8 clients.
TWO_SITES = ('coffee.meta.stackexchange.com', 'conlang.meta.stackexchange.com')
TWO_SITES_CLIENTS = 8


@pytest.fixture(scope='session')
def two_sites_cache_dir(tmp_path_factory) -> str:
  """TWO_SITES converted once per test session (read-only for the tests)."""
  from tasks.stackoverflow import convert_lib  # pylint: disable=g-import-not-at-top
  root = os.path.join(shared_data_dir(), 'stackexchange')
  if not os.path.isdir(root):
    pytest.fail(f'real data not found at {root}; set SHARED_DATA_DIR')
  out = str(tmp_path_factory.mktemp('so_two_sites'))
  stats = convert_lib.convert([os.path.join(root, s) for s in TWO_SITES], out, min_examples=80)
  assert stats.sites == 2 and stats.clients_kept == TWO_SITES_CLIENTS
  return out


@pytest.fixture(scope='session', autouse=True)
def _tff_shutdown():
  yield
  from partial_personalization.execution import runtime
  runtime.shutdown_tff_runtime()
