"""Imports TensorFlow without its start-up noise on machines without a GPU.

TensorFlow 2.14 logs three ERROR lines at import on every machine where its
CUDA plugins are installed ("Unable to register cuDNN factory: Attempting to
register factory for plugin cuDNN when one has already been registered", and
the same for cuFFT and cuBLAS): the plugins register twice, nothing fails.
They cannot be hidden by `TF_CPP_MIN_LOG_LEVEL` without hiding real errors,
so `import_tensorflow` captures what TensorFlow writes to stderr while it is
imported and writes back every line but those (`NOISE`). The package imports
TensorFlow this way first (`partial_personalization/__init__.py`), so every
runner and notebook starts clean.
"""

import os
import re
import sys
import tempfile

_STDERR_FD = 2

# The lines dropped; anything else TensorFlow writes at import is kept.
NOISE = re.compile(rb'Unable to register (cuDNN|cuFFT|cuBLAS) factory: Attempting to register '
                   rb'factory for plugin \w+ when one has already been registered')


def without_noise(captured: bytes) -> bytes:
  """`captured` (stderr bytes) without the lines `NOISE` matches."""
  return b''.join(line for line in captured.splitlines(keepends=True)
                  if not NOISE.search(line))


def import_tensorflow() -> None:
  """Imports TensorFlow (once), with `NOISE` filtered from what it writes to
  file descriptor 2 meanwhile. A no-op once TensorFlow is imported."""
  if 'tensorflow' in sys.modules:
    return
  # TensorFlow's C++ logging writes to file descriptor 2 whatever `sys.stderr`
  # is (a notebook kernel replaces it, and its `fileno()` may be another fd).
  stderr_fd = _STDERR_FD
  try:
    os.fstat(stderr_fd)
  except OSError:  # No stderr at all: nothing to filter.
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import
    return
  if sys.stderr is not None:
    sys.stderr.flush()
  saved = os.dup(stderr_fd)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), stderr_fd)
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top,unused-import,redefined-outer-name
    finally:
      if sys.stderr is not None:
        sys.stderr.flush()
      os.dup2(saved, stderr_fd)
      os.close(saved)
      captured.seek(0)
      kept = without_noise(captured.read())
      if kept:
        os.write(stderr_fd, kept)
