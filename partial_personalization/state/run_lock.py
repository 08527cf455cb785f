"""One writer per directory: an exclusive lock that the kernel releases when
its holder dies.

A run directory (checkpoints, personal-state store, metrics), a converter's
output folder and a baseline's cached evaluations must each have one writer:
a second process resuming the same run would roll back the first one's round
in progress (see `training_loop`). The lock is `flock` on `<dir>/.lock`, held
for the whole run, with the holder's PID in the file for the error message.
It is re-entrant within a process (the runner holds it around
`training_loop.run_training`, which takes it too) and not inherited by child
processes (close-on-exec).
"""

import contextlib
import fcntl
import os

LOCK_FILENAME = '.lock'
_held: dict[str, int] = {}  # realpath of a lock file -> nesting depth in this process


class LockedError(RuntimeError):
  """Another process holds the directory's lock."""


def _holder(path: str) -> str:
  try:
    with open(path) as f:
      pid = f.read().strip()
  except OSError:
    pid = ''
  return f'PID {pid}' if pid else 'a process that has not written its PID yet'


@contextlib.contextmanager
def exclusive(directory: str, what: str = 'run directory'):
  """Holds `directory`'s lock (creating the directory) for the `with` block.

  Raises:
    LockedError: another process holds it; the message names its PID.
    OSError: the directory cannot be created or written (read-only, full).
  """
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, LOCK_FILENAME)
  key = os.path.realpath(path)
  if key in _held:
    _held[key] += 1
    try:
      yield
    finally:
      _held[key] -= 1
    return
  fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    raise LockedError(
        f'{directory}: this {what} is in use by {_holder(path)}. Two writers would '
        'corrupt it: wait for that process to finish (or stop it), or use another '
        'directory.') from None
  try:
    os.ftruncate(fd, 0)
    os.write(fd, f'{os.getpid()}\n'.encode())
    _held[key] = 1
    yield
  finally:
    _held.pop(key, None)
    os.close(fd)  # Releases the lock.
