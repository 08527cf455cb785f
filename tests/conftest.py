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


@pytest.fixture(scope='session', autouse=True)
def _tff_shutdown():
  yield
  from partial_personalization import runtime
  runtime.shutdown_tff_runtime()
