"""Content hashes and finiteness checks that guard saved state.

Used by `training_loop` (checkpoint hashes recorded with each commit,
non-finite rounds refused), `client_state` (per-row hashes) and the runners
(the data a run trains on, the baseline a cached evaluation belongs to).
"""

import hashlib
import os
from typing import Iterable

import numpy as np


def file_sha256(path: str) -> str:
  """sha256 of a file's bytes, read in 1 MiB blocks."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def tree_sha256(path: str) -> str:
  """sha256 over a directory's relative file names and contents (e.g. a
  `tff.program` checkpoint)."""
  digest = hashlib.sha256()
  for root, dirs, files in os.walk(path):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      digest.update(os.path.relpath(full, path).encode() + b'\0')
      digest.update(file_sha256(full).encode())
  return digest.hexdigest()


def files_sha256(paths: Iterable[str]) -> str:
  """sha256 over the base names and contents of `paths` (a dataset's files)."""
  digest = hashlib.sha256()
  for path in paths:
    digest.update(os.path.basename(path).encode() + b'\0' + file_sha256(path).encode())
  return digest.hexdigest()


def all_finite(weights) -> bool:
  """Whether every floating-point array of a `ModelWeights` is finite."""
  arrays = list(weights.trainable) + list(weights.non_trainable)
  return all(np.all(np.isfinite(a)) for a in arrays
             if np.issubdtype(np.asarray(a).dtype, np.floating))
