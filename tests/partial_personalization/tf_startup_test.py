"""tf_startup: TensorFlow's CUDA registration noise is dropped, real errors kept."""

import os
import subprocess
import sys

import pytest

from partial_personalization import tf_startup

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))
NOISE = (
    b'2026-12-02 14:33:52.182103: E tensorflow/compiler/xla/stream_executor/cuda/'
    b'cuda_dnn.cc:9342] Unable to register cuDNN factory: Attempting to register factory '
    b'for plugin cuDNN when one has already been registered\n'
    b'2026-12-02 14:33:52.182157: E tensorflow/compiler/xla/stream_executor/cuda/'
    b'cuda_fft.cc:609] Unable to register cuFFT factory: Attempting to register factory '
    b'for plugin cuFFT when one has already been registered\n'
    b'2026-12-02 14:33:52.182190: E tensorflow/compiler/xla/stream_executor/cuda/'
    b'cuda_blas.cc:1518] Unable to register cuBLAS factory: Attempting to register factory '
    b'for plugin cuBLAS when one has already been registered\n')
REAL = b'2026-12-02 14:33:52.2: E tensorflow/core/x.cc:1] Unable to register cuDNN: out of memory\n'


def test_only_the_registration_lines_are_dropped():
  assert tf_startup.without_noise(NOISE) == b''
  assert tf_startup.without_noise(NOISE + REAL + b'a warning\n') == REAL + b'a warning\n'


def _stderr_of(code: str) -> bytes:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='0')
  return subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env,
                        capture_output=True, check=True).stderr


def test_importing_the_package_is_quiet_where_tensorflow_is_not():
  plain = _stderr_of('import tensorflow')
  ours = _stderr_of('import partial_personalization, sys; '
                    'print("real error", file=sys.stderr)')
  assert b'Unable to register' not in ours
  assert b'real error' in ours  # stderr works after the import.
  if b'Unable to register' in plain:  # Machines with TF's CUDA plugins (CI's too).
    # TF's other start-up lines (INFO, with level 0) still pass (their text
    # after the timestamped prefix).
    kept = [line.split(b'] ', 1)[-1] for line in plain.splitlines()
            if b'Unable to register' not in line]
    assert kept and all(message in ours for message in kept)


if __name__ == '__main__':
  sys.exit(pytest.main([__file__, '-q']))
